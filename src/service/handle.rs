//! A service that opens on first use, so sockets can listen before any slow initialisation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::OnceCell;

use super::{Cause, ServiceError, VolumeService};

type OpenFuture = Pin<Box<dyn Future<Output = Result<VolumeService, ServiceError>> + Send>>;

/// Opens the service when first asked (and again after a failed attempt).
pub struct ServiceHandle {
    /// The service name, for errors.
    name: String,
    /// The opened service.
    cell: OnceCell<Arc<VolumeService>>,
    /// How to open it.
    open: Box<dyn Fn() -> OpenFuture + Send + Sync>,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle").field("name", &self.name).field("open", &self.cell.initialized()).finish()
    }
}

impl ServiceHandle {
    /// A handle around a service that is already open.
    pub fn ready(service: Arc<VolumeService>) -> Self {
        let name = service.name().to_owned();
        Self {
            name,
            cell: OnceCell::new_with(Some(service)),
            open: Box::new(|| Box::pin(async { unreachable_open() })),
        }
    }

    /// A handle that opens the service with `open` on first use.
    pub fn lazy<F, Fut>(name: &str, open: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<VolumeService, ServiceError>> + Send + 'static,
    {
        Self { name: name.to_owned(), cell: OnceCell::new(), open: Box::new(move || Box::pin(open())) }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The open service, opening it if needed.
    ///
    /// # Errors
    /// The service could not be opened; the next call tries again.
    pub async fn get(&self) -> Result<&Arc<VolumeService>, ServiceError> {
        self.cell.get_or_try_init(|| async { (self.open)().await.map(Arc::new) }).await.map_err(|e| {
            let name = self.name.clone();
            ServiceError::new("open service", name.clone(), Cause::Unavailable { service: name, source: Box::new(e) })
        })
    }
}

fn unreachable_open() -> Result<VolumeService, ServiceError> {
    Err(ServiceError::new("open service", "", Cause::NotFound))
}
