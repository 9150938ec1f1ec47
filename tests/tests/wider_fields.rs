//! A record whose integer fields are wider than the table's columns reads
//! and writes that table (issue #29, item 4): the binary of an
//! `integer → bigint` change runs before the switch, beside the old one.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Filter, ListOptions, Record, Settings};
use uuid::Uuid;

/// The table as it is: `INTEGER` and `SMALLINT` columns.
mod before {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "usage")]
    pub struct Usage {
        pub id: Uuid,
        pub tokens: i32,
        pub retries: Option<i16>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

/// The next binary's type for the same table: both fields `i64`.
mod after {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "usage")]
    pub struct Usage {
        pub id: Uuid,
        pub tokens: i64,
        pub retries: Option<i64>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn an_i64_field_reads_and_writes_an_integer_column_beside_the_i32_binary() {
    let t = TestDb::with_tables(&[before::Usage::schema()])
        .await
        .unwrap();
    let db = t.db();
    // The new binary is another process with connections of its own: the
    // two types send the same statement text with other parameter types, and
    // a connection's statement cache keeps the first.
    let next = Db::connect_url(&t.url(), &Settings::default())
        .await
        .unwrap();
    let old = before::Usage::repo()
        .create(
            db,
            before::NewUsage {
                tokens: 1_234,
                retries: Some(3),
            },
        )
        .await
        .unwrap();
    let none = before::Usage::repo()
        .create(
            db,
            before::NewUsage {
                tokens: -7,
                retries: None,
            },
        )
        .await
        .unwrap();

    // The new type reads the old binary's rows: get, list, and a filter
    // with an i64 value on the INTEGER column.
    let read = after::Usage::repo().get(&next, old.id).await.unwrap();
    assert_eq!((read.tokens, read.retries), (1_234, Some(3)));
    let read = after::Usage::repo().get(&next, none.id).await.unwrap();
    assert_eq!((read.tokens, read.retries), (-7, None));
    let page = after::Usage::repo()
        .list(&next, after::Usage::TOKENS.gt(0i64), ListOptions::new())
        .await
        .unwrap();
    let ids: Vec<Uuid> = page.items.iter().map(|u| u.id).collect();
    assert_eq!(ids, [old.id]);

    // It writes too (create, create_many, update), and the old type reads it.
    let new = after::Usage::repo()
        .create(
            &next,
            after::NewUsage {
                tokens: 40_000,
                retries: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(new.tokens, 40_000);
    let many = after::Usage::repo()
        .create_many(
            &next,
            vec![after::NewUsage {
                tokens: 5,
                retries: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(many[0].tokens, 5);
    let patch = after::UsagePatch {
        tokens: Some(41_000),
        ..Default::default()
    };
    after::Usage::repo()
        .update(&next, new.id, patch)
        .await
        .unwrap();
    let seen = before::Usage::repo().get(db, new.id).await.unwrap();
    assert_eq!((seen.tokens, seen.retries), (41_000, Some(1)));

    // A value the column cannot hold yet is refused by the database and
    // changes nothing.
    let too_big = after::UsagePatch {
        tokens: Some(i64::from(i32::MAX) + 1),
        ..Default::default()
    };
    let err = after::Usage::repo()
        .update(&next, new.id, too_big)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate().as_deref(), Some("22003"), "{err}");
    let seen = before::Usage::repo().get(db, new.id).await.unwrap();
    assert_eq!(seen.tokens, 41_000);
    assert_eq!(
        after::Usage::repo()
            .count(&next, Filter::all())
            .await
            .unwrap(),
        4
    );
}

/// After the switch (`ALTER … TYPE bigint`), the new binary's connections
/// still hold statements prepared against the `INTEGER` column; PostgreSQL
/// refuses those once ("cached plan must not change result type"), and the
/// pool prepares them again instead of failing the call.
#[tokio::test]
async fn statements_prepared_before_the_switch_run_after_it() {
    let t = TestDb::with_tables(&[before::Usage::schema()])
        .await
        .unwrap();
    // One connection each, so that a call meets the statements cached
    // before: emptying the cache once prepares every later one afresh, so
    // each way through the pool gets a pool of its own.
    let one = || async {
        Db::connect_url(
            &t.url(),
            &Settings {
                pool_size: 1,
                ..Settings::default()
            },
        )
        .await
        .unwrap()
    };
    let (next, streaming) = (one().await, one().await);
    let repo = after::Usage::repo();
    let new = |tokens| after::NewUsage {
        tokens,
        retries: None,
    };
    let row = repo.create(&next, new(1)).await.unwrap();
    repo.get(&next, row.id).await.unwrap();
    repo.list(&next, Filter::all(), ListOptions::new())
        .await
        .unwrap();
    let streamed = || async {
        let rows: Vec<_> = sqlx::query("SELECT tokens FROM usage")
            .fetch(&streaming)
            .try_collect()
            .await
            .unwrap();
        rows.len()
    };
    assert_eq!(streamed().await, 1);
    sqlx::raw_sql("ALTER TABLE usage ALTER COLUMN tokens TYPE bigint")
        .execute(t.db())
        .await
        .unwrap();
    assert_eq!(streamed().await, 1);
    let big = i64::from(i32::MAX) + 1;
    let created = repo.create(&next, new(big)).await.unwrap();
    assert_eq!(created.tokens, big);
    assert_eq!(repo.get(&next, created.id).await.unwrap().tokens, big);
    let page = repo
        .list(&next, Filter::all(), ListOptions::new())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
}
