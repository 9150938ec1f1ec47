//! TLS for the WAL stream, as libpq and the pool speak it: an SSLRequest,
//! then sqlx's rustls handshake with the same verification `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` give the pool's connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx_core::net::tls::{CertificateInput, TlsConfig};
use sqlx_core::net::{Socket as SqlxSocket, SocketIntoBox};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Socket, protocol};
use crate::error::{Error, Result};

/// `SSLRequest`: length 8, then the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// `stream`, encrypted as `mode` asks: never for `disable` and `allow`
/// (whose retry asks again with `require`), when the server offers it for
/// `prefer`, and always for the rest, which a server without TLS fails.
pub(super) async fn negotiate(
    mut stream: TcpStream,
    options: &PgConnectOptions,
    mode: PgSslMode,
) -> Result<Box<dyn Socket>> {
    if matches!(mode, PgSslMode::Disable | PgSslMode::Allow) {
        return Ok(Box::new(stream));
    }
    stream.write_all(&SSL_REQUEST).await.map_err(protocol)?;
    let answer = stream.read_u8().await.map_err(protocol)?;
    let host = options.get_host().to_owned();
    match (answer, mode) {
        (b'S', _) => {}
        (b'N', PgSslMode::Prefer) => return Ok(Box::new(stream)),
        (b'N', _) => {
            return Err(Error::Tls {
                host,
                reason: "the server does not offer TLS".into(),
            });
        }
        (other, _) => return Err(protocol(format!("SSLRequest answered {other:#04x}"))),
    }
    let [root, cert, key] = certificates(options);
    let config = TlsConfig {
        accept_invalid_certs: !matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull),
        accept_invalid_hostnames: !matches!(mode, PgSslMode::VerifyFull),
        hostname: &host,
        root_cert_path: root.as_ref(),
        client_cert_path: cert.as_ref(),
        client_key_path: key.as_ref(),
    };
    let socket = sqlx_core::net::tls::handshake(stream, config, SocketIntoBox)
        .await
        .map_err(|e| Error::Tls {
            host: host.clone(),
            reason: e.to_string(),
        })?;
    Ok(Box::new(Io(socket)))
}

/// The root, client certificate and client key `options` name. sqlx keeps
/// them private and prints them into its URL (`file: <path>` for a file).
fn certificates(options: &PgConnectOptions) -> [Option<CertificateInput>; 3] {
    use sqlx::ConnectOptions;
    let url = options.to_url_lossy();
    let named = |key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| match v.strip_prefix("file: ") {
                Some(path) => CertificateInput::File(path.into()),
                None => CertificateInput::from(v.into_owned()),
            })
    };
    [named("sslrootcert"), named("sslcert"), named("sslkey")]
}

/// sqlx's socket (its TLS stream) as tokio I/O, for the stream's codec.
struct Io(Box<dyn SqlxSocket>);

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut unfilled: &mut [u8] = buf.initialize_unfilled();
            match self.0.try_read(&mut unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.0.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.0.poll_write_ready(cx))?;
                }
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_shutdown(cx)
    }
}
