//! A CSI client for the tests: the generated clients over a Unix socket.

use std::path::{Path, PathBuf};

use rexray::csi::proto::controller_client::ControllerClient;
use rexray::csi::proto::identity_client::IdentityClient;
use rexray::csi::proto::node_client::NodeClient;
use rexray::csi::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use rexray::csi::proto::VolumeCapability;
use tonic::transport::{Channel, Endpoint};

/// The three clients on one connection.
pub struct Clients {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

/// Connects to the CSI socket at `socket`.
pub async fn connect(socket: &Path) -> Clients {
    let socket: PathBuf = socket.to_path_buf();
    let channel = Endpoint::try_from("http://csi.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .unwrap();
    Clients {
        identity: IdentityClient::new(channel.clone()),
        controller: ControllerClient::new(channel.clone()),
        node: NodeClient::new(channel),
    }
}

/// A mount capability with file system `fs` (`""`: the volume's) and access `mode`.
pub fn mount_cap(fs: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: mode.into() }),
    }
}

/// The code of a call that must fail, with its message checked to say something in words.
pub fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    let status = result.expect_err("the call should have failed");
    assert!(!status.message().is_empty(), "{status:?} has no message");
    assert!(!status.message().contains("Some(") && !status.message().contains(" {"), "a Debug dump: {status:?}");
    status.code()
}
