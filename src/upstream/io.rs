//! The byte stream under an upstream connection: plain TCP, or TLS for `https://` endpoints.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Endpoint;
use crate::config::EndpointAddr;
use crate::tls::Origin;

/// A connected upstream stream.
#[derive(Debug)]
pub enum UpstreamIo {
    /// `host:port` and `http://`.
    Plain(TcpStream),
    /// `https://`, handshake done.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Endpoint {
    /// Connects within `timeout`, which covers the TCP connect and the TLS handshake together.
    pub async fn open(&self, timeout: Duration) -> Result<UpstreamIo, Box<dyn std::error::Error + Send + Sync>> {
        connect(&self.addr, self.tls.as_ref(), timeout).await
    }
}

/// Connects to `addr` within `timeout` (TCP connect and TLS handshake together), with TLS when
/// `tls` is given: the client side, or why it could not be set up.
pub async fn connect(
    addr: &EndpointAddr,
    tls: Option<&Result<Origin, String>>,
    timeout: Duration,
) -> Result<UpstreamIo, Box<dyn std::error::Error + Send + Sync>> {
    let open = async {
        let stream = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        stream.set_nodelay(true)?;
        match tls {
            None => Ok(UpstreamIo::Plain(stream)),
            Some(Ok(origin)) => Ok(UpstreamIo::Tls(Box::new(origin.connect(stream).await.map_err(
                |e| match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                    Some(why) => io::Error::other(format!("TLS handshake with {addr} failed: {why}")),
                    None => e,
                },
            )?))),
            Some(Err(why)) => Err(io::Error::other(why.clone())),
        }
    };
    Ok(tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| format!("connect to {addr} timed out after {timeout:?}"))??)
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
