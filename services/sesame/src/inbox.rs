//! gRPC face of the built-in push simulator: `PushInbox`, where a simulated
//! phone in another process subscribes with its push token and receives what
//! APNs or FCM would have delivered; `PushGateway`, where dispatchers in
//! other processes send pushes ([`RemoteSimulator`]), as they would to APNs.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use sesame_challenge::Shutdown;
use sesame_core::time::UnixMillis;
use sesame_proto::simulator::v1 as pb;
use sesame_proto::simulator::v1::push_gateway_client::PushGatewayClient;
use sesame_push::{Accepted, PushOutcome, PushProvider, SimulatedPush, SimulatorProvider};
use sesame_queue::PushJob;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub struct InboxApi {
    simulator: Arc<SimulatorProvider>,
    shutdown: Shutdown,
}

impl InboxApi {
    pub fn new(simulator: Arc<SimulatorProvider>, shutdown: Shutdown) -> Self {
        InboxApi {
            simulator,
            shutdown,
        }
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::Push, Status>> + Send>>;

#[tonic::async_trait]
impl pb::push_inbox_server::PushInbox for InboxApi {
    type SubscribeStream = PushStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let token = request.into_inner().push_token;
        sesame_core::validate::push_token(&token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let sim = self.simulator.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    push = sim.recv(&token) => {
                        let Some(p) = push else { return };
                        let msg = pb::Push {
                            challenge_id: p.challenge_id,
                            alert_title: p.alert_title,
                            alert_body: p.alert_body,
                            collapse_id: p.collapse_id,
                            expires_at_unix_ms: p.expires_at,
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// `PushGateway`: accepts pushes from dispatchers in other processes.
pub struct GatewayApi {
    simulator: Arc<SimulatorProvider>,
}

impl GatewayApi {
    pub fn new(simulator: Arc<SimulatorProvider>) -> Self {
        GatewayApi { simulator }
    }
}

#[tonic::async_trait]
impl pb::push_gateway_server::PushGateway for GatewayApi {
    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let r = request.into_inner();
        sesame_core::validate::push_token(&r.push_token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        sesame_core::ChallengeId::parse(&r.challenge_id)
            .map_err(|e| Status::invalid_argument(format!("challenge_id: {e}")))?;
        if r.collapse_id.is_empty() || r.collapse_id.len() > 64 {
            return Err(Status::invalid_argument(
                "collapse_id: 1-64 bytes (APNs's limit), the challenge id",
            ));
        }
        let push = SimulatedPush {
            challenge_id: r.challenge_id,
            alert_title: sesame_push::ALERT_TITLE.into(),
            alert_body: sesame_push::ALERT_BODY.into(),
            collapse_id: r.collapse_id,
            expires_at: r.expires_at_unix_ms,
        };
        match self.simulator.accept(&r.push_token, push) {
            Accepted::DeadToken => Err(Status::not_found("Unregistered: the push token is dead")),
            a => Ok(Response::new(pb::DeliverResponse {
                duplicate: a == Accepted::Duplicate,
            })),
        }
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::SimulatorStats>, Status> {
        Ok(Response::new(pb::SimulatorStats {
            delivered: self.simulator.delivered(),
            duplicates: self.simulator.duplicates(),
        }))
    }
}

/// A push provider that sends to a simulator in another process
/// (`simulator_url`), the way a dispatcher sends to APNs: any number of
/// dispatcher replicas then deliver into one set of phone inboxes.
pub struct RemoteSimulator {
    client: PushGatewayClient<Channel>,
}

impl RemoteSimulator {
    /// Connects lazily: the simulator may start after the dispatcher. An
    /// `https://` URL gets TLS with `tls` (internal mTLS when it names a
    /// client certificate).
    pub fn new(url: &str, tls: &sesame_tls::ClientTls) -> anyhow::Result<Self> {
        let channel = tls
            .endpoint(url)?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(RemoteSimulator {
            client: PushGatewayClient::new(channel),
        })
    }
}

#[async_trait]
impl PushProvider for RemoteSimulator {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn send(&self, job: &PushJob, _now: UnixMillis) -> PushOutcome {
        let push = SimulatedPush::for_job(job);
        let request = pb::DeliverRequest {
            push_token: job.push_token.clone(),
            challenge_id: push.challenge_id,
            collapse_id: push.collapse_id,
            expires_at_unix_ms: push.expires_at,
        };
        match self.client.clone().deliver(request).await {
            Ok(r) => {
                if r.into_inner().duplicate {
                    sesame_dispatcher::metrics::duplicate("simulator");
                }
                PushOutcome::Delivered
            }
            Err(s) if s.code() == tonic::Code::NotFound => PushOutcome::DeadToken,
            Err(s) if s.code() == tonic::Code::InvalidArgument => PushOutcome::Failed {
                reason: s.message().to_owned(),
            },
            // A certificate the gateway does not accept: no push can go
            // out until an operator fixes the TLS settings.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) =>
            {
                PushOutcome::Misconfigured {
                    reason: format!("simulator refused this dispatcher: {}", s.message()),
                }
            }
            // Unreachable or overloaded simulator: like an APNs 5xx.
            Err(s) => PushOutcome::Retry {
                after: None,
                reason: format!("simulator: {:?} {}", s.code(), s.message()),
            },
        }
    }
}
