//! The server going away: connect fails fast with its cause, and a server
//! killed under a write loop loses no acknowledged write. Its own test binary,
//! because it kills its process's throwaway cluster.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mandrake_storage::testing::{self, TestDb};
use mandrake_storage::{Db, Error, Record, Settings};
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Entry {
    pub id: Uuid,
    pub n: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[tokio::test]
async fn a_refused_server_fails_at_once_with_its_cause() {
    let settings = Settings {
        acquire_timeout: Duration::from_secs(30),
        ..Settings::default()
    };
    let start = Instant::now();
    let err = Db::connect_url("postgres://postgres@127.0.0.1:1/none", &settings)
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let text = err.to_string().to_lowercase();
    assert!(text.contains("refused"), "the cause is kept: {err}");
}

#[tokio::test]
async fn a_server_killed_under_a_write_loop_loses_no_acknowledged_write() {
    let t = TestDb::with_tables(&[Entry::schema()]).await.unwrap();
    let Some(cluster) = testing::cluster().unwrap() else {
        eprintln!("skipped: DATABASE_URL names a server this test must not kill");
        return;
    };
    let acquire_timeout = Duration::from_secs(5);
    let settings = Settings {
        acquire_timeout,
        pool_size: 4,
        ..Settings::default()
    };
    // The throwaway cluster trades durability for speed; this session asks
    // for the real thing, so an acknowledged commit is in the WAL.
    let options = t.connect_options().options([("synchronous_commit", "on")]);
    let db = Db::connect_options(options, &settings).await.unwrap();

    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failures = 0;
            let mut slowest = Duration::ZERO;
            let deadline = Instant::now() + Duration::from_secs(60);
            // Until 200 writes succeed after the first failure (the restart).
            let mut after_outage = 0;
            for n in 0.. {
                let start = Instant::now();
                let result = Entry::repo().create(&db, NewEntry { n }).await;
                slowest = slowest.max(start.elapsed());
                match result {
                    Ok(e) => {
                        acknowledged.push(e.id);
                        if failures > 0 {
                            after_outage += 1;
                        }
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                if after_outage >= 200 || Instant::now() > deadline {
                    break;
                }
            }
            (acknowledged, failures, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cluster.status().unwrap().pid.expect("the cluster runs");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Backends notice the postmaster's death and exit; until then a restart
    // finds their shared memory still in use.
    let restart_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = cluster.clone();
        match tokio::task::spawn_blocking(move || c.start())
            .await
            .unwrap()
        {
            Ok(()) => break,
            Err(e) if Instant::now() < restart_deadline => {
                eprintln!("restart not yet possible: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cannot restart: {e}"),
        }
    }
    let (acknowledged, failures, slowest) = writer.await.unwrap();
    assert!(failures > 0, "the outage was seen");
    assert!(
        slowest <= acquire_timeout + Duration::from_secs(1),
        "a call hung for {slowest:?}"
    );
    let check = Db::connect_url(&t.url(), &Settings::default())
        .await
        .unwrap();
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM entries")
        .fetch_all(&check)
        .await
        .unwrap();
    let stored: std::collections::HashSet<Uuid> = stored.into_iter().collect();
    let lost = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged writes lost",
        acknowledged.len()
    );
    println!(
        "{} acknowledged, {failures} failed during the outage, slowest call {slowest:?}",
        acknowledged.len()
    );
    let err = Entry::repo().get(&check, Uuid::now_v7()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
}
