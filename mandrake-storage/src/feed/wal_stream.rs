//! A logical replication connection (`replication=database`): the server's
//! walsender decodes the WAL once, as it is written, and streams each
//! `pgoutput` message as it commits. Reading a slot through the SQL
//! functions instead decodes again from the slot's restart point on every
//! call, which under steady writes lags up to the 15 s between the
//! server's running-transaction records: measured, that cost writers 39%
//! of their throughput (`docs/BENCHMARKS.md`).
//!
//! sqlx speaks no replication protocol, so this is the small part of it
//! the feed needs, on `postgres-protocol`'s message codec and
//! authentication: start-up, password/MD5/SCRAM, a simple query, and the
//! copy-both stream with standby status updates. Over TCP it speaks TLS as
//! `sslmode` says (the SSLRequest, then sqlx's own rustls handshake, so the
//! pool and the stream verify certificates alike); Unix sockets are plain.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

mod tls;

trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// What the stream brings.
pub(crate) enum Replicated {
    /// One `pgoutput` message.
    Data(BytesMut),
    /// The server asks for a status update now.
    KeepaliveReply,
    /// A keepalive that asks nothing.
    Keepalive,
}

pub(crate) struct WalStream {
    socket: Box<dyn Socket>,
    read: BytesMut,
    write: BytesMut,
}

fn protocol(err: impl std::fmt::Display) -> Error {
    Error::FeedInterrupted(format!("WAL stream: {err}"))
}

/// `%41` → `A`: sqlx writes the password percent-encoded into its URL.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl WalStream {
    /// Connects as a replication client of `options`' database and signs in.
    /// `sslmode=allow` is libpq's: without TLS, then with it when the server
    /// wants it.
    pub(crate) async fn connect(options: &PgConnectOptions) -> Result<WalStream> {
        match WalStream::connect_as(options, options.get_ssl_mode()).await {
            Err(Error::FeedInterrupted(reason))
                if matches!(options.get_ssl_mode(), PgSslMode::Allow)
                    && reason.contains("no encryption") =>
            {
                WalStream::connect_as(options, PgSslMode::Require).await
            }
            other => other,
        }
    }

    async fn connect_as(options: &PgConnectOptions, mode: PgSslMode) -> Result<WalStream> {
        let port = options.get_port();
        let socket: Box<dyn Socket> = match options.get_socket() {
            Some(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(
                    tokio::net::UnixStream::connect(&path)
                        .await
                        .map_err(protocol)?,
                )
            }
            None => {
                let stream = tokio::net::TcpStream::connect((options.get_host(), port))
                    .await
                    .map_err(protocol)?;
                stream.set_nodelay(true).map_err(protocol)?;
                tls::negotiate(stream, options, mode).await?
            }
        };
        let mut stream = WalStream {
            socket,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
        };
        let user = options.get_username().to_owned();
        let database = options.get_database().unwrap_or(&user).to_owned();
        let params = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            ("application_name", "mandrake-feed"),
        ];
        frontend::startup_message(params, &mut stream.write).map_err(protocol)?;
        stream.flush().await?;
        let password = options
            .to_url_lossy()
            .password()
            .map(percent_decode)
            .or_else(|| std::env::var("PGPASSWORD").ok());
        stream.authenticate(&user, password.as_deref()).await?;
        Ok(stream)
    }

    async fn authenticate(&mut self, user: &str, password: Option<&str>) -> Result<()> {
        let needed = || protocol("the server asks for a password and none was given");
        let mut scram = None;
        loop {
            match self.message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let password = password.ok_or_else(needed)?;
                    frontend::password_message(password.as_bytes(), &mut self.write)
                        .map_err(protocol)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = password.ok_or_else(needed)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write)
                        .map_err(protocol)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let password = password.ok_or_else(needed)?;
                    let mut mechanisms = body.mechanisms();
                    let mut plain = false;
                    while let Some(m) = mechanisms.next().map_err(protocol)? {
                        plain |= m == sasl::SCRAM_SHA_256;
                    }
                    if !plain {
                        return Err(protocol("the server offers no SCRAM-SHA-256"));
                    }
                    let client =
                        ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        client.message(),
                        &mut self.write,
                    )
                    .map_err(protocol)?;
                    self.flush().await?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL out of order"))?;
                    client.update(body.data()).map_err(protocol)?;
                    frontend::sasl_response(client.message(), &mut self.write).map_err(protocol)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASL out of order"))?;
                    client.finish(body.data()).map_err(protocol)?;
                }
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                _ => return Err(protocol("an unexpected message while signing in")),
            }
        }
    }

    /// Runs a replication command whose rows are not needed.
    pub(crate) async fn command(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.write).map_err(protocol)?;
        self.flush().await?;
        let mut failed = None;
        loop {
            match self.message().await? {
                Message::ReadyForQuery(_) => return failed.map_or(Ok(()), Err),
                Message::ErrorResponse(body) => failed = Some(server_error(&body)),
                _ => {}
            }
        }
    }

    /// Starts streaming `slot` from its confirmed place.
    pub(crate) async fn start(&mut self, slot: &str) -> Result<()> {
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL 0/0 \
             (proto_version '1', publication_names '{}')",
            crate::schema::FEED_PUBLICATION
        );
        frontend::query(&sql, &mut self.write).map_err(protocol)?;
        self.flush().await?;
        loop {
            // CopyBothResponse, which the codec does not know: taken by hand.
            self.fill(5).await?;
            if self.read[0] == b'W' {
                let len = (&self.read[1..5]).get_u32() as usize;
                self.fill(len + 1).await?;
                self.read.advance(len + 1);
                return Ok(());
            }
            match self.message().await? {
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::NoticeResponse(_) => {}
                _ => return Err(protocol("START_REPLICATION did not start a stream")),
            }
        }
    }

    /// The next message of the stream. Cancel-safe (the hub reads it under a
    /// timeout): bytes read stay in the buffer until a whole message is there.
    pub(crate) async fn next(&mut self) -> Result<Replicated> {
        loop {
            match self.message().await? {
                Message::CopyData(body) => {
                    let data = body.data();
                    match data.first() {
                        // XLogData: start, end, clock, then the message.
                        Some(b'w') if data.len() >= 25 => {
                            return Ok(Replicated::Data(BytesMut::from(&data[25..])));
                        }
                        // Keepalive: end, clock, reply requested.
                        Some(b'k') if data.len() >= 18 => {
                            return Ok(if data[17] == 1 {
                                Replicated::KeepaliveReply
                            } else {
                                Replicated::Keepalive
                            });
                        }
                        _ => return Err(protocol("an unknown copy message")),
                    }
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::CopyDone => return Err(protocol("the server ended the stream")),
                _ => {}
            }
        }
    }

    /// Whether a whole message is already buffered, so that `next` would
    /// not wait for the network.
    pub(crate) fn has_buffered(&self) -> bool {
        self.read.len() >= 5 && self.read.len() > (&self.read[1..5]).get_u32() as usize
    }

    /// Tells the server that everything up to `lsn` is handled, so that the
    /// slot may move on and the WAL behind it be recycled.
    pub(crate) async fn confirm(&mut self, lsn: u64) -> Result<()> {
        const POSTGRES_EPOCH_MICROS: u64 = 946_684_800_000_000;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
            .saturating_sub(POSTGRES_EPOCH_MICROS);
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(lsn); // written
        body.put_u64(lsn); // flushed
        body.put_u64(lsn); // applied
        body.put_u64(now);
        body.put_u8(0);
        frontend::CopyData::new(body)
            .map_err(protocol)?
            .write(&mut self.write);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<()> {
        self.socket
            .write_all_buf(&mut self.write)
            .await
            .map_err(protocol)
    }

    /// Reads until `n` bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<()> {
        while self.read.len() < n {
            self.read.reserve(n - self.read.len());
            if self
                .socket
                .read_buf(&mut self.read)
                .await
                .map_err(protocol)?
                == 0
            {
                return Err(protocol("the server closed the connection"));
            }
        }
        Ok(())
    }

    async fn message(&mut self) -> Result<Message> {
        loop {
            if let Some(message) = Message::parse(&mut self.read).map_err(protocol)? {
                return Ok(message);
            }
            let wanted = self.read.len() + 1;
            self.fill(wanted).await?;
        }
    }
}

/// A server's error as the feed reports it: the message and its code.
fn server_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> Error {
    let mut fields = body.fields();
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    Error::FeedInterrupted(format!("{message} ({code})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_percent_encoded_password_is_decoded() {
        assert_eq!(super::percent_decode("p%40ss%2Fw%20rd"), "p@ss/w rd");
        assert_eq!(super::percent_decode("100%"), "100%");
    }
}
