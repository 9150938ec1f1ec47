//! The embedded cluster and the test harness, against real PostgreSQL.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mandrake_storage::testing::{TestDb, throwaway_cluster};
use mandrake_storage::{Db, Settings};
use sqlx::ConnectOptions;

async fn select_one(url: &str) -> i32 {
    let mut conn = mandrake_storage::connect_one(url).await.expect("connect");
    sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("select 1")
}

#[tokio::test]
async fn start_is_idempotent_and_stop_stops() {
    let cluster = throwaway_cluster().unwrap();
    cluster.start().unwrap();
    let pid = cluster.status().unwrap().pid.expect("running");
    cluster.start().unwrap();
    assert_eq!(
        cluster.status().unwrap().pid,
        Some(pid),
        "second start reuses the server"
    );
    assert_eq!(select_one(&cluster.url("postgres")).await, 1);
    cluster.stop().unwrap();
    assert!(!cluster.status().unwrap().running);
}

#[tokio::test]
async fn stale_pid_file_is_recovered() {
    let cluster = throwaway_cluster().unwrap();
    cluster.start().unwrap();
    cluster.stop().unwrap();
    let pid_file = cluster.root().join("data/postmaster.pid");
    // A crash leaves the pid file of a process that is gone, or after a reboot
    // names a pid that now belongs to something else: try both.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    for pid in [dead, std::process::id()] {
        std::fs::write(&pid_file, format!("{pid}\n{}\n", cluster.root().display())).unwrap();
        cluster.start().unwrap();
        assert!(cluster.status().unwrap().running);
        assert_eq!(select_one(&cluster.url("postgres")).await, 1);
        cluster.stop().unwrap();
    }
}

#[tokio::test]
async fn concurrent_starts_end_with_one_healthy_cluster() {
    let cluster = throwaway_cluster().unwrap();
    let starters: Vec<_> = (0..4)
        .map(|_| {
            let c = cluster.clone();
            std::thread::spawn(move || c.start())
        })
        .collect();
    for s in starters {
        s.join().unwrap().unwrap();
    }
    assert!(cluster.status().unwrap().running);
    assert_eq!(select_one(&cluster.url("postgres")).await, 1);
    cluster.stop().unwrap();
}

#[tokio::test]
async fn database_url_overrides_the_embedded_cluster() {
    let test_db = TestDb::empty().await.unwrap();
    let url = test_db.connect_options().to_url_lossy().to_string();
    let settings = Settings::from_lookup(|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap();
    assert_eq!(settings.resolve_url().await.unwrap(), url);
    let db = Db::connect_with(&settings).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(name, test_db.name());
}

#[test]
fn malformed_settings_are_config_errors() {
    for (key, value) in [
        ("MANDRAKE_POOL_SIZE", "lots"),
        ("MANDRAKE_POOL_SIZE", "0"),
        ("MANDRAKE_ACQUIRE_TIMEOUT_SECS", "-1"),
        ("DATABASE_URL", "not a url"),
    ] {
        let err = Settings::from_lookup(|k| (k == key).then(|| value.to_owned())).unwrap_err();
        assert!(
            matches!(err, mandrake_storage::Error::Config(_)),
            "{key}={value}: {err}"
        );
    }
}

/// Run by `no_server_outlives_the_test_process` in a child process.
#[tokio::test]
#[ignore = "run as a child process by no_server_outlives_the_test_process"]
async fn child_starts_a_cluster_then_fails() {
    let Some(report) = std::env::var_os("MANDRAKE_CHILD_REPORT") else {
        return;
    };
    let test_db = TestDb::empty().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(test_db.db())
        .await
        .unwrap();
    let root = mandrake_storage::testing::cluster()
        .unwrap()
        .unwrap()
        .root()
        .to_path_buf();
    let postmaster = std::fs::read_to_string(root.join("data/postmaster.pid")).unwrap();
    let postmaster = postmaster.lines().next().unwrap().to_owned();
    std::fs::write(report, format!("{postmaster}\n{pid}\n{}", root.display())).unwrap();
    panic!("this test fails on purpose");
}

#[test]
fn no_server_outlives_the_test_process() {
    if std::env::var("DATABASE_URL").is_ok() {
        return; // nothing is started when a server is given
    }
    let report = std::env::temp_dir().join(format!("mandrake-child-{}", std::process::id()));
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_starts_a_cluster_then_fails",
            "--ignored",
            "--quiet",
        ])
        .env("MANDRAKE_CHILD_REPORT", &report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child test fails on purpose");
    let text = std::fs::read_to_string(&report).unwrap();
    std::fs::remove_file(&report).unwrap();
    let mut lines = text.lines();
    let postmaster: u32 = lines.next().unwrap().parse().unwrap();
    let backend: u32 = lines.next().unwrap().parse().unwrap();
    let root = PathBuf::from(lines.next().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    while (alive(postmaster) || alive(backend) || root.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(postmaster), "postmaster {postmaster} still runs");
    assert!(!alive(backend), "backend {backend} still runs");
    assert!(!root.exists(), "{} was left behind", root.display());
}

#[tokio::test]
async fn clusters_of_deleted_checkouts_are_pruned_and_destroy_removes_all() {
    use mandrake_storage::cluster::{Cluster, prune_orphans};
    let base = std::env::temp_dir().join(format!("mandrake-orphans-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    // A fallback cluster records the folder it stands in for; this one's
    // checkout has been deleted, and its server still runs.
    let orphan = Cluster::new(base.join("orphan"), true).unwrap();
    orphan.start().unwrap();
    let pid = orphan.status().unwrap().pid.expect("running");
    let deleted = base.join("deleted-checkout").join(".mandrake");
    std::fs::write(
        orphan.root().join("origin"),
        deleted.as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    // This one's checkout still exists.
    let kept = base.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join(".lock"), "").unwrap();
    std::fs::write(
        kept.join("origin"),
        base.join(".mandrake").as_os_str().as_encoded_bytes(),
    )
    .unwrap();

    let removed = prune_orphans(&base).unwrap();
    assert_eq!(removed, vec![orphan.root().to_path_buf()]);
    assert!(!orphan.root().exists());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "server {pid} stopped: {state}"
    );
    assert!(kept.exists(), "a cluster whose checkout exists stays");

    let other = Cluster::new(base.join("other"), true).unwrap();
    other.start().unwrap();
    other.destroy().unwrap();
    assert!(!other.root().exists());
    assert!(!other.status().unwrap().running);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Run by `outside_a_workspace_connect_refuses_instead_of_running_initdb`.
#[tokio::test]
#[ignore = "run as a child process in a folder outside any workspace"]
async fn child_connects_without_database_url() {
    let Some(report) = std::env::var_os("MANDRAKE_CHILD_REPORT") else {
        return;
    };
    let outcome = match Db::connect().await {
        Ok(_) => "connected".to_owned(),
        Err(e) => e.to_string(),
    };
    std::fs::write(report, outcome).unwrap();
}

#[test]
fn outside_a_workspace_connect_refuses_instead_of_running_initdb() {
    let dir = std::env::temp_dir().join(format!("mandrake-nowhere-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_connects_without_database_url",
            "--ignored",
            "--quiet",
        ])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("MANDRAKE_DATA_DIR")
        .env("MANDRAKE_CHILD_REPORT", &report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let outcome = std::fs::read_to_string(&report).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        outcome.contains("not inside a Cargo workspace"),
        "{outcome}"
    );
    assert!(outcome.contains("DATABASE_URL"), "{outcome}");
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("report")],
        "no cluster was made"
    );
}
