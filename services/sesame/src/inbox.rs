//! gRPC face of the built-in push simulator (`sesame.simulator.v1.PushInbox`):
//! a simulated phone in another process subscribes with its push token and
//! receives what APNs or FCM would have delivered.

use std::pin::Pin;
use std::sync::Arc;

use sesame_challenge::Shutdown;
use sesame_proto::simulator::v1 as pb;
use sesame_push::SimulatorProvider;
use tokio_stream::Stream;
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
