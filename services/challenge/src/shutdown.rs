//! A shutdown signal that long-lived streams select on.

use tokio::sync::watch;

/// Fires once; clones all see it. [`Shutdown::never`] never fires.
#[derive(Clone)]
pub struct Shutdown(Option<watch::Receiver<bool>>);

/// The sending side: [`Trigger::fire`] ends every stream holding a [`Shutdown`].
pub struct Trigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(Some(rx)))
    }

    pub fn never() -> Shutdown {
        Shutdown(None)
    }

    /// Resolves once the trigger fired (never, if the trigger was dropped unfired).
    pub async fn wait(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                if rx.wait_for(|fired| *fired).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}
