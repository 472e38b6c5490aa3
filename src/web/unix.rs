//! An acceptor for a Unix listening socket handed over by systemd. salvo's own
//! `UnixListener` always binds a path itself, so an inherited socket needs this adapter.

use salvo::conn::tcp::TcpCoupler;
use salvo::conn::{Accepted, Acceptor, ConnCtrl, Holding, StraightStream};
use salvo::fuse::ArcFusePolicy;
use salvo::http::Version;
use salvo::http::uri::Scheme;
use std::io::Result as IoResult;
use tokio::net::{UnixListener, UnixStream};

pub struct InheritedUnixAcceptor {
    inner: UnixListener,
    holdings: Vec<Holding>,
}

impl InheritedUnixAcceptor {
    pub fn new(listener: std::os::unix::net::UnixListener) -> IoResult<Self> {
        listener.set_nonblocking(true)?;
        let inner = UnixListener::from_std(listener)?;
        let holdings = vec![Holding {
            local_addr: inner.local_addr()?.into(),
            http_versions: vec![Version::HTTP_11],
            http_scheme: Scheme::HTTP,
        }];
        Ok(InheritedUnixAcceptor { inner, holdings })
    }
}

impl Acceptor for InheritedUnixAcceptor {
    type Coupler = TcpCoupler<Self::Stream>;
    type Stream = StraightStream<UnixStream>;

    fn holdings(&self) -> &[Holding] {
        &self.holdings
    }

    async fn accept(
        &mut self,
        _fuse_policy: Option<ArcFusePolicy>,
    ) -> IoResult<Accepted<Self::Coupler, Self::Stream>> {
        let (conn, remote) = self.inner.accept().await?;
        let conn_ctrl = ConnCtrl::new();
        Ok(Accepted {
            coupler: TcpCoupler::new(),
            stream: StraightStream::new(conn, None, conn_ctrl.clone(), None),
            fuse_config: None,
            conn_ctrl,
            local_addr: self.holdings[0].local_addr.clone(),
            remote_addr: remote.into(),
            http_scheme: Scheme::HTTP,
        })
    }
}
