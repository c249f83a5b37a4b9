//! `sesame`: one binary for every role and for the client tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sesame::cli;
use sesame::{Config, Sesame};
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::{Decision, Platform};
use sesame_proto::types::v1::NumberMatchMode;

#[derive(Parser)]
#[command(
    name = "sesame",
    version,
    about = "Push-notification authentication backbone"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Subcommand)]
enum Command {
    /// Run the server (all roles by default, zero configuration).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `roles`, e.g. `all` or `challenge,verifier`.
        #[arg(long)]
        roles: Option<String>,
    },
    /// Load the configuration as `serve` would (defaults, --config, then
    /// SESAME_* variables), validate it and print it as TOML with secrets
    /// redacted; exit 64 if it is invalid.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `roles`, as serve's --roles.
        #[arg(long)]
        roles: Option<String>,
        /// Also fail when a SESAME_* variable names no configuration key
        /// (a typo that serve would ignore).
        #[arg(long)]
        strict_env: bool,
        /// Validate only; print nothing on success.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Create or update the ScyllaDB schema (keyspace with
    /// NetworkTopologyStrategy, tables) for `storage = "scylla://..."`;
    /// safe to run again: it applies only the versions the keyspace lacks.
    Migrate {
        /// TOML configuration file (the same as serve's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `storage`, e.g. `scylla://10.0.0.1,10.0.0.2/sesame`.
        #[arg(long)]
        storage: Option<String>,
        /// Print the CQL it would run, without connecting.
        #[arg(long)]
        dry_run: bool,
        /// Create the keyspace even when a datacenter has fewer nodes than
        /// its replication factor (nodes still joining).
        #[arg(long)]
        force: bool,
    },
    /// Run the APNs and FCM simulators (TLS, HTTP/2) and the phones' push
    /// inbox; write their CA, an APNs .p8 key, an FCM service-account file and
    /// the `push_apps` configuration for `serve` into --dir.
    SimulatePush {
        #[arg(long, default_value = "sesame-push-sim")]
        dir: PathBuf,
        /// The tenant the two simulated apps (`<tenant>-ios`, `<tenant>-android`) belong to.
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long, default_value = "127.0.0.1:8443")]
        apns_listen: String,
        #[arg(long, default_value = "127.0.0.1:8444")]
        fcm_listen: String,
        /// gRPC `sesame.simulator.v1.PushInbox`, where simulated phones read their pushes.
        #[arg(long, default_value = "127.0.0.1:50070")]
        inbox_listen: String,
    },
    /// Run one whole login (tenant + simulated phone) against a server; exit 0 on APPROVED.
    Demo {
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Tenant API key; default: the development key in <data-dir>/dev-tenant.key.
        #[arg(long, env = "SESAME_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[arg(long, default_value = "sesame-data")]
        data_dir: PathBuf,
        /// Seconds to wait for the verdict.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// The phone's push inbox when pushes go through APNs/FCM, e.g. the
        /// one `sesame simulate-push` serves (`http://127.0.0.1:50070`).
        #[arg(long)]
        inbox: Option<String>,
        /// Where the phone talks (the verifier role's device API) when it is
        /// not --server, as in a deployment with one process per role.
        #[arg(long)]
        device_server: Option<String>,
    },
    /// Tenant side: start enrolling a phone for a user (prints the QR URI).
    Enroll {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        #[arg(long, env = "SESAME_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[arg(long, default_value = "sesame-data")]
        data_dir: PathBuf,
    },
    /// Tenant side: ask a user's phones to approve a sign-in, and wait for the verdict.
    Challenge {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "Sesame CLI")]
        client_name: String,
        /// Makes it a transaction of this amount (e.g. 125.50).
        #[arg(long)]
        amount: Option<String>,
        #[arg(long, default_value = "EUR")]
        currency: String,
        #[arg(long, default_value = "")]
        payee: String,
        #[arg(long, value_enum, default_value_t = Mode::Enter)]
        number_match: Mode,
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u32,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        #[arg(long, env = "SESAME_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[arg(long, default_value = "sesame-data")]
        data_dir: PathBuf,
    },
    /// A simulated phone.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Operator: create, list, disable and enable tenants, bind them to a
    /// client certificate (admin key required).
    Tenant {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Operator: create, list, rotate and revoke a tenant's API keys (admin
    /// key required). New keys are printed once, alone on stdout.
    Apikey {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Operator: check the tamper-evident audit trail, or export it.
    Audit {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every hash of every chain (read through the admin API, or
    /// from --file); exit status 1 and one line per problem if any record
    /// was edited, dropped or reordered.
    Verify {
        /// A copy to check instead (JSON lines, as on the Kafka audit topic
        /// or from `sesame audit export`).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Every record as JSON lines on stdout, chain by chain.
    Export,
}

#[derive(Args)]
struct AdminArgs {
    #[arg(long, global = true, default_value = DEFAULT_SERVER)]
    server: String,
    /// The admin key; default: the one `sesame serve` generated in <data-dir>/admin.key.
    #[arg(long, global = true, env = "SESAME_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    #[arg(long, global = true, default_value = "sesame-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its first API key.
    Create {
        tenant_id: String,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Client-certificate identity its calls must present (URI SAN or subject DN).
        #[arg(long, default_value = "")]
        client_identity: String,
    },
    /// Show one tenant: id, state, created, client identity, name.
    Get {
        tenant_id: String,
    },
    /// Every tenant, one per line.
    List,
    /// Refuse every call of the tenant (PERMISSION_DENIED) until enabled again.
    Disable {
        tenant_id: String,
    },
    Enable {
        tenant_id: String,
    },
    /// Demand a client certificate with this identity on the tenant's calls;
    /// an empty identity ("") removes the binding.
    Bind {
        tenant_id: String,
        client_identity: String,
    },
    Rename {
        tenant_id: String,
        display_name: String,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// A new key beside the tenant's others; printed once.
    Create { tenant_id: String },
    /// The tenant's keys: id, state, created, expires (never secrets).
    List { tenant_id: String },
    /// A new key now; the old one keeps working for --grace-seconds.
    Rotate {
        tenant_id: String,
        key_id: String,
        /// How long the old key still works (default one day; 0: stop now).
        #[arg(long)]
        grace_seconds: Option<u32>,
    },
    /// Stop a key at once.
    Revoke { tenant_id: String, key_id: String },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Create a device key and enroll it with an enrollment URI.
    Enroll {
        #[arg(long)]
        uri: String,
        #[arg(long, default_value = "sesame-device.json")]
        key_file: PathBuf,
        #[arg(long, value_enum, default_value_t = Alg::P256)]
        alg: Alg,
        #[arg(long, value_enum, default_value_t = Os::Android)]
        platform: Os,
        #[arg(long, default_value = "Simulated phone")]
        name: String,
    },
    /// Wait for challenges and answer them.
    Run {
        #[arg(long, default_value = "sesame-device.json")]
        key_file: PathBuf,
        /// Answer without asking.
        #[arg(long, value_enum)]
        answer: Option<AnswerArg>,
        /// The number from the sign-in page (else asked on the terminal).
        #[arg(long)]
        number: Option<String>,
        /// Exit after one answer.
        #[arg(long)]
        once: bool,
        /// Poll every N seconds instead of waiting for pushes.
        #[arg(long)]
        poll: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    None,
    Choose,
    Enter,
}

#[derive(Clone, Copy, ValueEnum)]
enum Alg {
    P256,
    Ed25519,
}

#[derive(Clone, Copy, ValueEnum)]
enum Os {
    Ios,
    Android,
}

#[derive(Clone, Copy, ValueEnum)]
enum AnswerArg {
    Approve,
    Deny,
    Fraud,
}

/// `EX_USAGE`: invalid configuration.
const EXIT_CONFIG: u8 = 64;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The configuration as every command loads it: defaults, the file, the
/// environment, then the command line's overrides (`overrides`), validated
/// as a whole. `None` after printing why it is invalid (exit with
/// `EXIT_CONFIG`).
fn load_config(
    file: Option<PathBuf>,
    env: &std::collections::BTreeMap<String, String>,
    overrides: impl FnOnce(&mut Config),
) -> Option<Config> {
    let loaded = Config::load(file.as_deref(), env).and_then(|mut c| {
        overrides(&mut c);
        c.validate()?;
        Ok(c)
    });
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("sesame: invalid configuration: {e:#}");
            None
        }
    }
}

/// `--roles a,b`.
fn roles_arg(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_owned()).collect()
}

fn check_config(
    config_file: Option<PathBuf>,
    roles: Option<String>,
    strict_env: bool,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let unknown = Config::unknown_env(&env);
    for name in &unknown {
        eprintln!("sesame: {name} names no configuration key (ignored by serve)");
    }
    let Some(config) = load_config(config_file, &env, |c| {
        if let Some(r) = roles {
            c.roles = roles_arg(&r);
        }
    }) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    if strict_env && !unknown.is_empty() {
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    if !quiet {
        print!("{}", config.to_redacted_toml()?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    config_file: Option<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    roles: Option<String>,
) -> anyhow::Result<ExitCode> {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let Some(config) = load_config(config_file, &env, |c| {
        if let Some(l) = listen {
            c.listen = l;
        }
        if let Some(d) = data_dir {
            c.data_dir = d;
        }
        if let Some(r) = roles {
            c.roles = roles_arg(&r);
        }
    }) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let (log_control, otlp) =
        sesame::telemetry::init_tracing_with(&sesame::telemetry::TracingSettings {
            format: config.log_format.clone(),
            level: config.log_level.clone(),
            otlp_endpoint: config.otlp_endpoint.clone(),
            otlp_service_name: config.otlp_service_name.clone(),
        })?;
    if otlp.is_some() {
        tracing::info!(endpoint = %config.otlp_endpoint, "spans exported over OTLP");
    }
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let mut app = Sesame::open(config).await?;
    app.log_control = Some(log_control);
    if app.config.dev_tenant && app.roles.challenge {
        match app.ensure_dev_tenant().await? {
            Some(path) => {
                tracing::info!(key_file = %path.display(), "development tenant \"dev\" ready; `sesame demo` finds its key there")
            }
            None => tracing::info!(
                "development tenant \"dev\" ready with the configured dev_tenant_key"
            ),
        }
    }
    let served = app.serve(listener, shutdown_signal()).await;
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(
    config_file: Option<PathBuf>,
    storage: Option<String>,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    use sesame_storage_scylla::{schema, Flavor, FlavorSetting};
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let Some(config) = load_config(config_file, &env, |c| {
        if let Some(s) = storage {
            c.storage = s;
        }
    }) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let Some(scylla) = config.scylla_config()? else {
        eprintln!(
            "sesame migrate: storage = {:?} keeps its own schema; migrate is for storage = \"scylla://host[,host...]/keyspace\"",
            config.storage
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    if dry_run {
        let flavor = match scylla.section.flavor {
            FlavorSetting::Cassandra => Flavor::Cassandra,
            FlavorSetting::Scylla => Flavor::Scylla,
            FlavorSetting::Auto => {
                println!("-- scylla.flavor = auto: shown for ScyllaDB (on Cassandra the keyspace has no tablets option)");
                Flavor::Scylla
            }
        };
        println!(
            "-- schema version {} for keyspace {} ({} statements)",
            schema::latest_version(),
            scylla.keyspace,
            schema::plan(&scylla, flavor).len()
        );
        for statement in schema::plan(&scylla, flavor) {
            println!("{statement};\n");
        }
        return Ok(ExitCode::SUCCESS);
    }
    sesame::telemetry::init_tracing(&config.log_format, &config.log_level);
    let (session, flavor) = sesame_storage_scylla::connect(&scylla).await?;
    let warnings = sesame_storage_scylla::replication_warnings(&session, &scylla);
    for w in &warnings {
        eprintln!("sesame migrate: {w}");
    }
    if !warnings.is_empty() && !force {
        eprintln!(
            "sesame migrate: nothing changed; set scylla.replication to the cluster (e.g. \
             SESAME_SCYLLA__REPLICATION=datacenter1=1 for one node), or pass --force \
             if the nodes are still joining"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let applied = sesame_storage_scylla::migrate(&session, &scylla, flavor).await?;
    if applied.is_empty() {
        println!(
            "keyspace {} is at schema version {} ({flavor:?}): nothing to do",
            scylla.keyspace,
            schema::latest_version()
        );
    } else {
        println!(
            "keyspace {}: applied schema versions {applied:?} ({flavor:?})",
            scylla.keyspace
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            roles,
        } => serve(config, listen, data_dir, roles).await,
        Command::CheckConfig {
            config,
            roles,
            strict_env,
            quiet,
        } => check_config(config, roles, strict_env, quiet),
        Command::Migrate {
            config,
            storage,
            dry_run,
            force,
        } => migrate(config, storage, dry_run, force).await,
        Command::SimulatePush {
            dir,
            tenant,
            apns_listen,
            fcm_listen,
            inbox_listen,
        } => {
            let bundle =
                sesame_push_sim::bundle::Bundle::start(&dir, &tenant, &apns_listen, &fcm_listen)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            let inbox = sesame_proto::simulator::v1::push_inbox_server::PushInboxServer::new(
                sesame::inbox::InboxApi::new(
                    bundle.control.inbox.clone(),
                    sesame_challenge::Shutdown::never(),
                ),
            );
            let addr: std::net::SocketAddr = inbox_listen
                .parse()
                .map_err(|e| anyhow::anyhow!("--inbox-listen {inbox_listen:?}: {e}"))?;
            println!("APNs simulator: {}", bundle.apns.url());
            println!("FCM simulator:  {}", bundle.fcm.url());
            println!("phone inbox:    http://{addr} (sesame.simulator.v1.PushInbox)");
            println!(
                "Sesame config:  {} (add it to serve's --config)",
                dir.join("push-apps.toml").display()
            );
            tonic::transport::Server::builder()
                .add_service(inbox)
                .serve_with_shutdown(addr, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            server,
            api_key,
            data_dir,
            timeout,
            inbox,
            device_server,
        } => {
            let api_key = cli::resolve_api_key(api_key.as_deref(), &data_dir)?;
            let status = cli::demo::run(&cli::demo::DemoOptions {
                device_server: device_server.unwrap_or_else(|| server.clone()),
                server,
                api_key,
                timeout: Duration::from_secs(timeout),
                verbose: true,
                inbox,
            })
            .await?;
            println!("verdict: {}", status.as_str().to_uppercase());
            Ok(if status == sesame_core::model::ChallengeStatus::Approved {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Enroll {
            user,
            server,
            api_key,
            data_dir,
        } => {
            let key = cli::resolve_api_key(api_key.as_deref(), &data_dir)?;
            cli::tenant::enroll(&server, &key, &user).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Challenge {
            user,
            client_name,
            amount,
            currency,
            payee,
            number_match,
            ttl_seconds,
            server,
            api_key,
            data_dir,
        } => {
            let key = cli::resolve_api_key(api_key.as_deref(), &data_dir)?;
            let mode = match number_match {
                Mode::None => NumberMatchMode::None,
                Mode::Choose => NumberMatchMode::Choose,
                Mode::Enter => NumberMatchMode::Enter,
            };
            let status = cli::tenant::challenge(
                &server,
                &key,
                cli::tenant::ChallengeArgs {
                    user,
                    client_name,
                    amount,
                    currency,
                    payee,
                    mode,
                    ttl_seconds,
                },
            )
            .await?;
            Ok(if status == "approved" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tenant { admin, command } => {
            use sesame_proto::admin::v1::UpdateTenantRequest as Update;
            let mut a = admin_client(admin).await?;
            let update = match command {
                TenantCommand::Create {
                    tenant_id,
                    display_name,
                    client_identity,
                } => {
                    a.create_tenant(&tenant_id, &display_name, &client_identity)
                        .await?;
                    return Ok(ExitCode::SUCCESS);
                }
                TenantCommand::Get { tenant_id } => {
                    a.get_tenant(&tenant_id).await?;
                    return Ok(ExitCode::SUCCESS);
                }
                TenantCommand::List => {
                    a.list_tenants().await?;
                    return Ok(ExitCode::SUCCESS);
                }
                TenantCommand::Disable { tenant_id } => Update {
                    tenant_id,
                    disabled: Some(true),
                    ..Default::default()
                },
                TenantCommand::Enable { tenant_id } => Update {
                    tenant_id,
                    disabled: Some(false),
                    ..Default::default()
                },
                TenantCommand::Bind {
                    tenant_id,
                    client_identity,
                } => Update {
                    tenant_id,
                    client_identity: Some(client_identity),
                    ..Default::default()
                },
                TenantCommand::Rename {
                    tenant_id,
                    display_name,
                } => Update {
                    tenant_id,
                    display_name: Some(display_name),
                    ..Default::default()
                },
            };
            a.update_tenant(update).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { admin, command } => {
            let report = match command {
                AuditCommand::Verify { file: Some(path) } => cli::audit::verify_file(&path)?,
                AuditCommand::Verify { file: None } => audit_client(admin).await?.verify().await?,
                AuditCommand::Export => {
                    let n = audit_client(admin).await?.export().await?;
                    eprintln!("{n} audit records exported");
                    return Ok(ExitCode::SUCCESS);
                }
            };
            Ok(if report.print() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Apikey { admin, command } => {
            let mut a = admin_client(admin).await?;
            match command {
                ApikeyCommand::Create { tenant_id } => a.create_key(&tenant_id).await?,
                ApikeyCommand::List { tenant_id } => a.list_keys(&tenant_id).await?,
                ApikeyCommand::Rotate {
                    tenant_id,
                    key_id,
                    grace_seconds,
                } => a.rotate_key(&tenant_id, &key_id, grace_seconds).await?,
                ApikeyCommand::Revoke { tenant_id, key_id } => {
                    a.revoke_key(&tenant_id, &key_id).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Device { command } => match command {
            DeviceCommand::Enroll {
                uri,
                key_file,
                alg,
                platform,
                name,
            } => {
                let alg = match alg {
                    Alg::P256 => KeyAlgorithm::EcdsaP256Sha256,
                    Alg::Ed25519 => KeyAlgorithm::Ed25519,
                };
                let platform = match platform {
                    Os::Ios => Platform::Ios,
                    Os::Android => Platform::Android,
                };
                cli::device::enroll(&uri, &key_file, alg, platform, &name).await?;
                Ok(ExitCode::SUCCESS)
            }
            DeviceCommand::Run {
                key_file,
                answer,
                number,
                once,
                poll,
            } => {
                let decision = answer.map(|a| match a {
                    AnswerArg::Approve => Decision::Approve,
                    AnswerArg::Deny => Decision::Deny,
                    AnswerArg::Fraud => Decision::DenyFraud,
                });
                cli::device::run(
                    &key_file,
                    cli::device::RunOptions {
                        decision,
                        number,
                        once,
                        poll: poll.map(Duration::from_secs),
                    },
                )
                .await?;
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

async fn admin_client(a: AdminArgs) -> anyhow::Result<cli::admin::Admin> {
    let key = cli::admin::resolve_admin_key(a.admin_key.as_deref(), &a.data_dir)?;
    cli::admin::Admin::connect(&a.server, key).await
}

async fn audit_client(a: AdminArgs) -> anyhow::Result<cli::audit::AuditAdmin> {
    let key = cli::admin::resolve_admin_key(a.admin_key.as_deref(), &a.data_dir)?;
    cli::audit::AuditAdmin::connect(&a.server, key).await
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sesame: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sesame: {e:#}");
            ExitCode::FAILURE
        }
    }
}
