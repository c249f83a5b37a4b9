//! The load tester against a real server in process (gRPC on loopback,
//! built-in push simulator): every scheduled login is started on time and
//! ends APPROVED, and the report accounts for each of them.

use std::time::Duration;

use sesame::{Config, Sesame};
use sesame_loadtest::{Engine, Options, Phase, Population};

/// A server with every role in process (memory store) on loopback, with
/// this push-bombing guard (`None`: the defaults); returns its URL, the
/// `dev` tenant's key and the directory to keep alive.
async fn start_server(
    guard: Option<sesame_ratelimit::GuardPolicy>,
) -> (String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config {
        listen: addr.to_string(),
        admin_listen: String::new(),
        data_dir: dir.path().to_path_buf(),
        storage: "memory".into(),
        ..Config::default()
    };
    if let Some(g) = guard {
        config.guard.defaults = g;
    }
    let app = Sesame::open(config).await.expect("open");
    let key_file = app
        .ensure_dev_tenant()
        .await
        .expect("tenant")
        .expect("a key file");
    let key = std::fs::read_to_string(key_file)
        .expect("key")
        .trim()
        .to_owned();
    tokio::spawn(app.serve(listener, std::future::pending()));
    (format!("http://{addr}"), key, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_run_approves_every_scheduled_login() {
    let guard = sesame_ratelimit::GuardPolicy {
        one_pending: false,
        max_prompts: 1_000,
        ..Default::default()
    };
    let (url, key, _dir) = start_server(Some(guard)).await;
    let population = Population::enroll(&url, &key, "steady", 20, 4)
        .await
        .expect("enroll");
    let channel = sesame_device_sim::connect(&url).await.expect("connect");
    let engine = Engine::new(
        channel,
        population,
        Options {
            api_key: key,
            server_url: url.clone(),
            think: Duration::from_millis(20),
            push_timeout: Duration::from_secs(10),
            max_in_flight: 1_000,
            server_pid: Some(std::process::id()),
            progress: false,
        },
    );
    let r = engine
        .run(
            "steady",
            &[Phase {
                rate: 20.0,
                secs: 2,
            }],
        )
        .await;
    assert_eq!(r.offered, 40, "{}", r.summary());
    assert_eq!(r.approved, 40, "{}", r.summary());
    assert_eq!((r.refused, r.failed, r.client_dropped), (0, 0, 0));
    assert_eq!(
        r.seconds.iter().map(|s| s.offered).collect::<Vec<_>>(),
        [20, 20]
    );
    // Latency excludes the 20 ms think time but not the work.
    assert!(r.login_ms[0] > 0.0 && r.login_ms[4] >= r.login_ms[2]);
    assert!(r.max_rss_mib.is_some_and(|m| m > 1.0));
    assert!(r.server_cpu_ms_per_login.is_some());
    assert!(r.svg().contains("<polyline"));
}

/// `enroll-storm`: every scheduled enrollment of the wave is made, with a
/// real key and a signed completion, while the logins still all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enroll_storm_enrolls_every_scheduled_phone_and_logins_go_on() {
    let (url, key, _dir) = start_server(None).await;
    // Ten phones, one login each: the default guard (one pending, five
    // prompts per user) stays in force.
    let population = Population::enroll(&url, &key, "storm-base", 10, 4)
        .await
        .expect("enroll");
    let channel = sesame_device_sim::connect(&url).await.expect("connect");
    let engine = Engine::new(
        channel,
        population,
        Options {
            api_key: key,
            server_url: url.clone(),
            think: Duration::from_millis(10),
            push_timeout: Duration::from_secs(10),
            max_in_flight: 1_000,
            server_pid: None,
            progress: false,
        },
    );
    let (r, storm) = engine
        .enroll_storm(&[Phase { rate: 5.0, secs: 2 }], 25.0)
        .await;
    assert_eq!(r.approved, 10, "{}", r.summary());
    assert_eq!(storm["counts"]["offered"], 50, "{storm}");
    assert_eq!(storm["counts"]["enrolled"], 50, "{storm}");
    assert!(
        storm["enroll_ms"]["p99"].as_f64().is_some_and(|p| p > 0.0),
        "{storm}"
    );
}
