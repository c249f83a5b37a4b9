//! The simulated phones: enrolled once, then each one's push inbox is
//! read by a task of its own that hands challenge ids to whoever logs in
//! with that phone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sesame_core::crypto::KeyAlgorithm;
use sesame_core::model::Platform;
use sesame_device_sim::SimDevice;
use sesame_proto::simulator::v1 as sim;
use sesame_proto::simulator::v1::push_inbox_client::PushInboxClient;
use sesame_proto::tenant::v1 as pb;
use sesame_proto::tenant::v1::enrollment_service_client::EnrollmentServiceClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::authed;

/// One simulated phone of one user.
pub struct Phone {
    pub user: String,
    pub device: SimDevice,
    /// Challenge ids pushed to this phone, in arrival order.
    pub pushes: tokio::sync::Mutex<mpsc::Receiver<String>>,
}

/// The phones, and which of them are free to start a login.
pub struct Population {
    pub phones: Vec<Arc<Phone>>,
    /// First in, first out: logins rotate over every phone (and user), so
    /// per-user limits see each user as rarely as the population allows.
    idle: Mutex<std::collections::VecDeque<usize>>,
}

/// Streams per gRPC connection for the inboxes (servers cap concurrent
/// streams per connection).
const STREAMS_PER_CONNECTION: usize = 100;

impl Population {
    /// Enrolls `n` phones (`prefix-<i>` users), `parallel` at a time, and
    /// opens their push inboxes.
    pub async fn enroll(
        url: &str,
        api_key: &str,
        prefix: &str,
        n: usize,
        parallel: usize,
    ) -> anyhow::Result<Population> {
        Self::enroll_at(url, url, api_key, prefix, n, parallel).await
    }

    /// Like [`Population::enroll`], with the phones' push inboxes at
    /// `inbox_url` (`sesame simulate-push`, when pushes go through the
    /// APNs/FCM simulators).
    pub async fn enroll_at(
        url: &str,
        inbox_url: &str,
        api_key: &str,
        prefix: &str,
        n: usize,
        parallel: usize,
    ) -> anyhow::Result<Population> {
        let channel = sesame_device_sim::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..parallel.max(1) {
            let (channel, next) = (channel.clone(), next.clone());
            let (url, key, prefix) = (url.to_owned(), api_key.to_owned(), prefix.to_owned());
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(mine);
                    }
                    let user = format!("{prefix}-{i}");
                    let device = enroll_one(&channel, &url, &key, &user, i, &prefix).await?;
                    mine.push((i, user, device));
                }
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            all.extend(r.context("enrollment task")??);
        }
        all.sort_by_key(|(i, _, _)| *i);

        let mut phones = Vec::with_capacity(n);
        let mut inbox_channel = None;
        for (i, (_, user, device)) in all.into_iter().enumerate() {
            if i % STREAMS_PER_CONNECTION == 0 {
                inbox_channel = Some(sesame_device_sim::connect(inbox_url).await?);
            }
            let channel = inbox_channel.clone().context("inbox connection")?;
            let (tx, rx) = mpsc::channel(16);
            let token = device.identity.push_token.clone();
            let mut stream = PushInboxClient::new(channel)
                .subscribe(sim::SubscribeRequest { push_token: token })
                .await
                .context("subscribing to a push inbox (is the built-in simulator on?)")?
                .into_inner();
            tokio::spawn(async move {
                while let Ok(Some(p)) = stream.message().await {
                    // Never blocks the stream: when 16 pushes wait unread,
                    // the newest is dropped (its login then times out).
                    let _ = tx.try_send(p.challenge_id);
                }
            });
            phones.push(Arc::new(Phone {
                user,
                device,
                pushes: tokio::sync::Mutex::new(rx),
            }));
        }
        let idle = Mutex::new((0..phones.len()).collect());
        Ok(Population { phones, idle })
    }

    /// A phone nobody is logging in with, if any.
    pub fn take(&self) -> Option<usize> {
        self.idle.lock().ok()?.pop_front()
    }

    pub fn give_back(&self, i: usize) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push_back(i);
        }
    }
}

async fn enroll_one(
    channel: &Channel,
    url: &str,
    api_key: &str,
    user: &str,
    i: usize,
    prefix: &str,
) -> anyhow::Result<SimDevice> {
    let mut attempt = 0;
    loop {
        let push_token = format!("lt-{prefix}-{i}-{}", random_hex());
        match enroll_once(channel, url, api_key, user, &push_token).await {
            Ok(d) => return Ok(d),
            // An overloaded server may shed enrollments: back off and retry.
            Err(_) if attempt < 19 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.context(format!("enrolling {user}"))),
        }
    }
}

/// One enrollment, once: `BeginEnrollment` as the tenant, then a fresh
/// P-256 key and a signed `CompleteEnrollment` as the phone.
pub async fn enroll_once(
    channel: &Channel,
    url: &str,
    api_key: &str,
    user: &str,
    push_token: &str,
) -> anyhow::Result<SimDevice> {
    let token = EnrollmentServiceClient::new(channel.clone())
        .begin_enrollment(authed(
            api_key,
            pb::BeginEnrollmentRequest {
                user_id: user.to_owned(),
                ttl_seconds: 0,
            },
        )?)
        .await?
        .into_inner()
        .enrollment_token;
    Ok(SimDevice::enroll(
        channel.clone(),
        url,
        &token,
        KeyAlgorithm::EcdsaP256Sha256,
        Platform::Android,
        push_token,
        "load test phone",
    )
    .await?)
}

/// The gRPC code a failed enrollment was refused with, if it was a refusal.
pub fn grpc_code(e: &anyhow::Error) -> Option<tonic::Code> {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return Some(s.code());
    }
    match e.downcast_ref::<sesame_device_sim::SimError>() {
        Some(sesame_device_sim::SimError::Rpc(s)) => Some(s.code()),
        _ => None,
    }
}

pub(crate) fn random_hex() -> String {
    sesame_core::ids::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
