//! The throwaway cluster as a managed service gives it
//! (`MANDRAKE_TEST_TLS=1`): TCP only over TLS, a certificate from a private
//! CA for `localhost`, and an owner that is not a superuser (`CREATEDB
//! CREATEROLE REPLICATION`, as RDS, Neon, Supabase and Azure give it). Test
//! databases are made, migrated and used as that owner with `verify-full`.

use std::path::Path;
use std::process::Command;

use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::cluster::Cluster;
use crate::error::{Error, Result};

/// The owner of the test databases in TLS mode.
pub const TLS_OWNER: &str = "mandrake_owner";

/// Runs `openssl` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            Error::Config(format!(
                "openssl makes the test certificates, and it did not run ({e}): install it \
                 (Debian: openssl)"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Makes, in `dir`: a CA (`ca.crt`, `ca.key`), another CA (`other-ca.*`),
/// a server certificate for `localhost` only (`server.*`), and a client
/// certificate for the role `certuser` (`client.*`), each valid two days.
pub fn make_certificates(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN={ca}");
        let (key, cert) = (format!("{ca}.key"), format!("{ca}.crt"));
        openssl(
            dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
                "-keyout", &key, "-out", &cert,
            ],
        )?;
    }
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| Error::Config(format!("cannot write {name}: {e}")))
    };
    write("server.ext", "subjectAltName=DNS:localhost\n")?;
    write("client.ext", "basicConstraints=CA:FALSE\n")?;
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=certuser")] {
        let (key, csr, cert, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out",
                &csr,
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

/// Turns `cluster` (started) into a TLS-only server on TCP port 5432,
/// restarts it, makes [`TLS_OWNER`], and returns the owner's options on its
/// `postgres` database with `verify-full` against the private CA.
pub(super) fn secure(cluster: &Cluster) -> Result<PgConnectOptions> {
    let certs = cluster.root().join("certs");
    make_certificates(&certs)?;
    let data = cluster.root().join("data");
    for file in ["server.key", "server.crt", "ca.crt"] {
        let to = data.join(file);
        std::fs::copy(certs.join(file), &to)
            .map_err(|e| Error::Config(format!("cannot copy {file}: {e}")))?;
        cluster.hand_over(&to)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Config(format!("cannot chmod {file}: {e}")))?;
    }
    // The socket's port number, on TCP too: PgBouncer and the cluster's
    // status find the socket by it.
    let port = crate::cluster::PORT;
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Err(Error::Config(format!(
            "MANDRAKE_TEST_TLS needs TCP port {port} on 127.0.0.1, and something holds it"
        )));
    }
    let conf = data.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf)
        .map_err(|e| Error::Config(format!("cannot read postgresql.conf: {e}")))?;
    let settings = format!(
        "{text}\nlisten_addresses = '127.0.0.1'\nport = {port}\nssl = on\n\
         ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n"
    );
    // TCP only with TLS; the socket, for setting up as the superuser.
    let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
    for (file, text) in [(conf, settings), (data.join("pg_hba.conf"), hba.to_owned())] {
        std::fs::write(&file, text)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", file.display())))?;
    }
    cluster.stop()?;
    cluster.start()?;
    let superuser = cluster.url("postgres");
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(e.to_string()))?
            .block_on(async move {
                let mut conn = crate::admin::connect_one(&superuser).await?;
                // pg_signal_backend, as RDS's rds_superuser and Azure's
                // azure_pg_admin have it: tests end other roles' sessions.
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "CREATE ROLE {TLS_OWNER} LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION; \
                     GRANT pg_signal_backend TO {TLS_OWNER}"
                )))
                .await?;
                Ok::<_, Error>(())
            })
    })
    .join()
    .map_err(|_| Error::Config("setting up the TLS owner panicked".into()))??;
    Ok(PgConnectOptions::new()
        .host("localhost")
        .port(port)
        .username(TLS_OWNER)
        .database("postgres")
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(certs.join("ca.crt")))
}
