//! The derived repository against real PostgreSQL: every method, every error kind.

use chrono::{DateTime, Utc};
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Error, Filter, ListOptions, Record, RecordEnum};
use uuid::Uuid;

#[derive(RecordEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shelf {
    Fiction,
    NonFiction,
    #[record(rename = "kids")]
    Children,
}

#[derive(Record, Clone)]
pub struct Library {
    pub id: Uuid,
    #[record(unique)]
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(
    table = "books",
    unique(library_id, isbn),
    index(library_id, created_at)
)]
pub struct Book {
    pub id: Uuid,
    #[record(references = "libraries", on_delete = "cascade")]
    pub library_id: Uuid,
    pub isbn: String,
    pub title: String,
    /// A reserved word as a column name.
    #[record(rename = "order", index)]
    pub position: i32,
    pub shelf: Shelf,
    pub subtitle: Option<String>,
    pub tags: Vec<String>,
    pub notes: Json<serde_json::Value>,
    #[record(sql_type = "VARCHAR(20)", default = "'free'")]
    pub price_text: Option<String>,
    #[record(secret)]
    pub loan_code: Option<String>,
    #[record(version)]
    pub version: i32,
    #[record(skip)]
    pub cached: Option<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

async fn setup() -> (TestDb, Library) {
    let db = TestDb::with_tables(&[Library::schema(), Book::schema()])
        .await
        .unwrap();
    let lib = Library::repo()
        .create(
            db.db(),
            NewLibrary {
                name: "Central".into(),
            },
        )
        .await
        .unwrap();
    (db, lib)
}

fn book(library_id: Uuid, n: usize) -> NewBook {
    NewBook {
        library_id,
        isbn: format!("isbn-{n}"),
        title: format!("Book {n}"),
        position: n as i32,
        shelf: Shelf::Children,
        subtitle: None,
        tags: vec!["a".into(), "b c".into()],
        notes: Json(serde_json::json!({ "n": n })),
        price_text: None,
        loan_code: None,
    }
}

#[tokio::test]
async fn create_get_find_delete() {
    let (t, lib) = setup().await;
    let db = t.db();
    let repo = Book::repo();
    let created = repo.create(db, book(lib.id, 1)).await.unwrap();
    assert_eq!(created.id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(created.version, 1);
    assert_eq!(created.shelf, Shelf::Children);
    assert_eq!(created.tags, vec!["a".to_owned(), "b c".to_owned()]);
    assert_eq!(created.price_text, None);
    let got = repo.get(db, created.id).await.unwrap();
    assert_eq!(got.title, "Book 1");
    assert_eq!(got.position, 1);
    assert_eq!(got.notes.0["n"], 1);
    assert!(repo.find(db, created.id).await.unwrap().is_some());
    assert!(repo.delete(db, created.id).await.unwrap());
    assert!(!repo.delete(db, created.id).await.unwrap());
    assert!(repo.find(db, created.id).await.unwrap().is_none());
    match repo.get(db, created.id).await {
        Err(Error::NotFound { table, id }) => {
            assert_eq!(table, "books");
            assert_eq!(id, created.id);
        }
        other => panic!("expected NotFound, got {:?}", other.map(|b| b.id)),
    }
}

#[tokio::test]
async fn patch_sets_null_on_purpose_and_bumps_updated_at() {
    let (t, lib) = setup().await;
    let db = t.db();
    let mut new = book(lib.id, 1);
    new.subtitle = Some("first".into());
    let created = Book::repo().create(db, new).await.unwrap();
    assert_eq!(created.subtitle.as_deref(), Some("first"));
    let updated = Book::repo()
        .update(
            db,
            created.id,
            BookPatch {
                subtitle: Some(None),
                title: Some("Renamed".into()),
                ..Default::default()
            }
            .expect_version(created.version),
        )
        .await
        .unwrap();
    assert_eq!(updated.subtitle, None);
    assert_eq!(updated.title, "Renamed");
    assert_eq!(updated.isbn, created.isbn, "unset fields keep their value");
    assert_eq!(updated.version, 2);
    assert!(updated.updated_at > created.updated_at);
    assert_eq!(updated.created_at, created.created_at);
    let missing = Book::repo()
        .update_unchecked(db, Uuid::now_v7(), BookPatch::default())
        .await;
    assert!(matches!(missing, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn stale_version_is_a_conflict_and_changes_nothing() {
    let (t, lib) = setup().await;
    let db = t.db();
    let created = Book::repo().create(db, book(lib.id, 1)).await.unwrap();
    let first = BookPatch {
        title: Some("mine".into()),
        ..Default::default()
    }
    .expect_version(created.version);
    let updated = Book::repo().update(db, created.id, first).await.unwrap();
    assert_eq!(updated.version, 2);
    let stale = BookPatch {
        title: Some("theirs".into()),
        ..Default::default()
    }
    .expect_version(created.version);
    let err = Book::repo()
        .update(db, created.id, stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { table: "books", .. }),
        "{err}"
    );
    let now = Book::repo().get(db, created.id).await.unwrap();
    assert_eq!(now.title, "mine");
    assert_eq!(now.version, 2);
    let missing = BookPatch {
        title: Some("nobody".into()),
        ..Default::default()
    }
    .expect_version(1);
    let err = Book::repo()
        .update(db, Uuid::now_v7(), missing)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn create_many_stores_100_000_rows_in_one_call_in_order() {
    let (t, lib) = setup().await;
    let rows: Vec<NewBook> = (0..100_000).map(|n| book(lib.id, n)).collect();
    let stored = Book::repo().create_many(t.db(), rows).await.unwrap();
    assert_eq!(stored.len(), 100_000);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, b)| b.position == i as i32)
    );
    assert_eq!(stored[99_999].tags, vec!["a".to_owned(), "b c".to_owned()]);
    let count = Book::repo().count(t.db(), Filter::all()).await.unwrap();
    assert_eq!(count, 100_000);
    assert!(
        Book::repo()
            .create_many(t.db(), Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
}

/// History from elsewhere keeps its times, at bulk speed: one statement
/// for 70,000 rows (past the 65,535 parameters of a VALUES list), given out
/// of time order, back in input order, each id a UUIDv7 of its own time.
#[tokio::test]
async fn import_many_keeps_the_times_and_ids_sort_by_them() {
    let (t, lib) = setup().await;
    let start = DateTime::parse_from_rfc3339("2021-03-04T05:06:07.123456Z")
        .unwrap()
        .with_timezone(&Utc);
    let n = 70_000;
    // Backwards in time, 1 µs apart at first (inside one millisecond), then
    // seconds apart.
    let at = |k: usize| {
        let back = if k < 500 {
            chrono::Duration::microseconds(k as i64)
        } else {
            chrono::Duration::seconds(k as i64)
        };
        start - back
    };
    let rows: Vec<(NewBook, DateTime<Utc>)> = (0..n).map(|k| (book(lib.id, k), at(k))).collect();
    let stored = Book::repo().import_many(t.db(), rows).await.unwrap();
    assert_eq!(stored.len(), n);
    for (k, b) in stored.iter().enumerate() {
        assert_eq!(b.position, k as i32, "input order");
        assert_eq!((b.created_at, b.updated_at), (at(k), at(k)));
        let (secs, nanos) = b.id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs as i64 * 1000 + i64::from(nanos) / 1_000_000,
            at(k).timestamp_millis(),
            "the id carries its row's millisecond"
        );
    }
    // By id is by time, within a millisecond too.
    let mut by_id = stored.clone();
    by_id.sort_by_key(|b| b.id);
    assert!(by_id.windows(2).all(|w| w[0].created_at < w[1].created_at));
    let read = Book::repo()
        .list(t.db(), Filter::all(), ListOptions::new().limit(3))
        .await
        .unwrap();
    assert_eq!(read.items[0].position as usize, n - 1, "the oldest first");

    // A time no UUIDv7 carries is refused before anything is sent.
    let early = DateTime::parse_from_rfc3339("1969-12-31T23:59:59Z")
        .unwrap()
        .with_timezone(&Utc);
    let refused = Book::repo()
        .import_many(t.db(), vec![(book(lib.id, n), early)])
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::InvalidValue {
                column: "created_at",
                ..
            })
        ),
        "{refused:?}"
    );
    let count = Book::repo().count(t.db(), Filter::all()).await.unwrap();
    assert_eq!(count, n as i64);
    assert!(
        Book::repo()
            .import_many(t.db(), Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn hostile_strings_are_stored_verbatim() {
    let (t, lib) = setup().await;
    let evil = "'); DROP TABLE books; --";
    let mut new = book(lib.id, 1);
    new.title = evil.into();
    new.tags = vec![evil.into(), "\"{}\\".into()];
    let created = Book::repo().create(t.db(), new.clone()).await.unwrap();
    let got = Book::repo().get(t.db(), created.id).await.unwrap();
    assert_eq!(got.title, evil);
    assert_eq!(got.tags, new.tags);
    let many = Book::repo()
        .create_many(
            t.db(),
            vec![NewBook {
                isbn: "x".into(),
                ..new.clone()
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        many[0].tags, new.tags,
        "create_many keeps array elements verbatim"
    );
    let found = Book::repo()
        .count(t.db(), Book::TITLE.eq(evil))
        .await
        .unwrap();
    assert_eq!(found, 2);
}

#[tokio::test]
async fn rolled_back_transaction_leaves_nothing() {
    let (t, lib) = setup().await;
    let mut tx = t.db().begin().await.unwrap();
    let created = Book::repo()
        .create(&mut *tx, book(lib.id, 1))
        .await
        .unwrap();
    assert!(
        Book::repo()
            .find(&mut *tx, created.id)
            .await
            .unwrap()
            .is_some()
    );
    tx.rollback().await.unwrap();
    assert!(
        Book::repo()
            .find(t.db(), created.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(Book::repo().count(t.db(), Filter::all()).await.unwrap(), 0);
}

#[tokio::test]
async fn constraint_failures_have_their_own_errors() {
    let (t, lib) = setup().await;
    let db = t.db();
    let dup = Library::repo()
        .create(
            db,
            NewLibrary {
                name: "Central".into(),
            },
        )
        .await
        .unwrap_err();
    match dup {
        Error::UniqueViolation { constraint } => assert_eq!(constraint, "libraries_name_key"),
        other => panic!("{other}"),
    }
    Book::repo().create(db, book(lib.id, 1)).await.unwrap();
    let dup = Book::repo().create(db, book(lib.id, 1)).await.unwrap_err();
    assert!(
        matches!(&dup, Error::UniqueViolation { constraint } if constraint == "books_library_id_isbn_key"),
        "{dup}"
    );
    let orphan = Book::repo()
        .create(db, book(Uuid::now_v7(), 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&orphan, Error::ForeignKeyViolation { constraint } if constraint == "books_library_id_fkey"),
        "{orphan}"
    );
    let bad_shelf = sqlx::query("UPDATE books SET shelf = 'attic'")
        .execute(db)
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert!(
        matches!(&bad_shelf, Error::CheckViolation { constraint } if constraint == "books_shelf_check"),
        "{bad_shelf}"
    );
    let null = sqlx::query("UPDATE books SET title = NULL")
        .execute(db)
        .await
        .map_err(Error::from)
        .unwrap_err();
    assert!(
        matches!(&null, Error::NotNullViolation { column } if column == "title"),
        "{null}"
    );
    assert!(!null.is_retryable());
}

#[tokio::test]
async fn count_exists_and_filters_including_null() {
    let (t, lib) = setup().await;
    let db = t.db();
    let mut with_subtitle = book(lib.id, 1);
    with_subtitle.subtitle = Some("s".into());
    Book::repo()
        .create_many(db, vec![with_subtitle, book(lib.id, 2), book(lib.id, 3)])
        .await
        .unwrap();
    let repo = Book::repo();
    assert_eq!(repo.count(db, Book::SUBTITLE.is_null()).await.unwrap(), 2);
    assert_eq!(
        repo.count(db, Book::SUBTITLE.is_not_null()).await.unwrap(),
        1
    );
    assert_eq!(
        repo.count(
            db,
            Book::POSITION.eq(2).and(Book::SHELF.eq(Shelf::Children))
        )
        .await
        .unwrap(),
        1
    );
    assert!(repo.exists(db, Book::ISBN.eq("isbn-3")).await.unwrap());
    assert!(!repo.exists(db, Book::ISBN.eq("nope")).await.unwrap());
}

#[tokio::test]
async fn upsert_updates_the_existing_row() {
    let (t, lib) = setup().await;
    let db = t.db();
    let first = Book::repo()
        .upsert(db, book(lib.id, 1), Book::ON_LIBRARY_ID_ISBN)
        .await
        .unwrap();
    let mut again = book(lib.id, 1);
    again.title = "Second edition".into();
    let second = Book::repo()
        .upsert(db, again, Book::ON_LIBRARY_ID_ISBN)
        .await
        .unwrap();
    assert_eq!(second.id, first.id, "the existing row keeps its id");
    assert_eq!(second.title, "Second edition");
    assert_eq!(Book::repo().count(db, Filter::all()).await.unwrap(), 1);
    // A table whose only unique column is the conflict target still returns the row.
    let lib_again = Library::repo()
        .upsert(
            db,
            NewLibrary {
                name: "Central".into(),
            },
            Library::ON_NAME,
        )
        .await
        .unwrap();
    assert_eq!(lib_again.id, lib.id);
}

#[tokio::test]
async fn list_by_foreign_key_and_secret_redaction() {
    let (t, lib) = setup().await;
    let db = t.db();
    let other = Library::repo()
        .create(
            db,
            NewLibrary {
                name: "Branch".into(),
            },
        )
        .await
        .unwrap();
    let mut secret = book(lib.id, 1);
    secret.loan_code = Some("hunter2".into());
    let b = Book::repo().create(db, secret.clone()).await.unwrap();
    Book::repo().create(db, book(other.id, 2)).await.unwrap();
    let page = Book::list_by_library_id(db, lib.id, ListOptions::new())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, b.id);
    assert!(page.next.is_none());
    for shown in [format!("{b:?}"), format!("{secret:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    // Deleting the library cascades to its books.
    Library::repo().delete(db, lib.id).await.unwrap();
    assert!(Book::repo().find(db, b.id).await.unwrap().is_none());
}

#[tokio::test]
async fn keyset_pages_see_every_existing_row_once_while_rows_are_added() {
    let (t, lib) = setup().await;
    let db = t.db();
    let existing = Book::repo()
        .create_many(db, (0..250).map(|n| book(lib.id, n)).collect())
        .await
        .unwrap();
    let mut extra = 10_000;
    let orders = [
        ("created_at", Book::CREATED_AT.asc()),
        ("id desc", Book::ID.desc()),
        ("order", Book::POSITION.asc()),
    ];
    for (label, order) in orders {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let options = ListOptions::new()
                .order_by(order)
                .limit(40)
                .after_opt(cursor);
            let page = Book::repo()
                .list(db, Book::LIBRARY_ID.eq(lib.id), options)
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|b| b.id));
            // Writers keep inserting between pages.
            extra += 1;
            Book::repo().create(db, book(lib.id, extra)).await.unwrap();
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        for b in &existing {
            let times = seen.iter().filter(|id| **id == b.id).count();
            assert_eq!(times, 1, "ordered by {label}: row seen {times} times");
        }
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no row twice");
    }
}

#[tokio::test]
async fn nul_in_text_is_refused_before_sending_and_names_the_column() {
    let (t, lib) = setup().await;
    let db = t.db();
    let mut new = book(lib.id, 1);
    new.title = "a\0b".into();
    let err = Book::repo().create(db, new).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                column: "title",
                ..
            }
        ),
        "{err}"
    );
    let mut in_array = book(lib.id, 2);
    in_array.tags = vec!["ok".into(), "x\0".into()];
    let err = Book::repo()
        .create_many(db, vec![book(lib.id, 3), in_array])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { column: "tags", .. }),
        "{err}"
    );
    let stored = Book::repo().create(db, book(lib.id, 4)).await.unwrap();
    let patch = BookPatch {
        subtitle: Some(Some("\0".into())),
        ..Default::default()
    };
    let err = Book::repo()
        .update(db, stored.id, patch.expect_version(stored.version))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                column: "subtitle",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("NUL"), "{err}");
    assert_eq!(
        Book::repo().count(db, Filter::all()).await.unwrap(),
        1,
        "nothing else stored"
    );
}

#[tokio::test]
async fn cursors_are_checked_whole() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use mandrake_storage::Cursor;
    let (t, lib) = setup().await;
    let db = t.db();
    Book::repo()
        .create_many(db, (0..3).map(|n| book(lib.id, n)).collect())
        .await
        .unwrap();
    let repo = Book::repo();
    let page = |options: ListOptions<Book>| repo.list(db, Filter::all(), options);
    let next = page(ListOptions::new().limit(1))
        .await
        .unwrap()
        .next
        .unwrap();
    assert_eq!(
        page(ListOptions::new().limit(1).after(next.clone()))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let expect_invalid = |result: mandrake_storage::Result<_>, needle: &str| match result {
        Err(Error::InvalidCursor(msg)) => assert!(msg.contains(needle), "{msg}"),
        Err(other) => panic!("expected InvalidCursor, got {other}"),
        Ok(_) => panic!("expected InvalidCursor"),
    };
    // The cursor is a checksum and the position as JSON, base64-encoded.
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(next.as_str()).unwrap()).unwrap();
    let (_, json) = raw.split_at(8);
    let forge = |json: &str| {
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(json.as_bytes());
        Cursor::from_string(URL_SAFE_NO_PAD.encode(format!("{crc:08x}{json}")))
    };
    // An edited cursor whose checksum was not recomputed.
    let edited =
        Cursor::from_string(URL_SAFE_NO_PAD.encode(raw.replacen("created_at", "created_ax", 1)));
    expect_invalid(page(ListOptions::new().after(edited)).await, "checksum");
    // Crafted ones with a valid checksum: another direction, a bad value.
    let mut position: serde_json::Value = serde_json::from_str(json).unwrap();
    position["order"][0] = "-created_at".into();
    let flipped = forge(&position.to_string());
    expect_invalid(
        page(ListOptions::new().after(flipped)).await,
        "ordered by (-created_at, id)",
    );
    let mut position: serde_json::Value = serde_json::from_str(json).unwrap();
    position["values"][0][1] = URL_SAFE_NO_PAD.encode("not a time").into();
    let bad_value = forge(&position.to_string());
    expect_invalid(
        page(ListOptions::new().after(bad_value)).await,
        "does not fit",
    );
    // A cursor of one order used with another.
    expect_invalid(
        page(
            ListOptions::new()
                .order_by(Book::CREATED_AT.desc())
                .after(next.clone()),
        )
        .await,
        "not (-created_at, -id)",
    );
    expect_invalid(
        page(ListOptions::new().after(Cursor::from_string("%%%"))).await,
        "not a cursor",
    );
}

/// A name unique among the live rows only: a partial unique index.
#[derive(Record, Clone)]
#[record(table = "labels", unique(name, where = "deleted_at IS NULL"))]
pub struct Label {
    pub id: Uuid,
    pub name: String,
    pub uses: i32,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A partial unique key is an upsert key like any other (`ON_NAME`), among
/// the rows its condition holds for: a deleted row never takes the name.
#[tokio::test]
async fn a_partial_unique_key_is_an_upsert_key_among_its_rows() {
    let t = TestDb::with_tables(&[Label::schema()]).await.unwrap();
    let db = t.db();
    let new = |name: &str, uses| NewLabel {
        name: name.into(),
        uses,
        deleted_at: None,
    };
    let first = Label::repo()
        .upsert(db, new("rust", 1), Label::ON_NAME)
        .await
        .unwrap();
    let again = Label::repo()
        .upsert(db, new("rust", 2), Label::ON_NAME)
        .await
        .unwrap();
    assert_eq!(
        (again.id, again.uses),
        (first.id, 2),
        "the live row updated"
    );
    sqlx::query("UPDATE labels SET deleted_at = now()")
        .execute(db)
        .await
        .unwrap();
    let fresh = Label::repo()
        .upsert(db, new("rust", 3), Label::ON_NAME)
        .await
        .unwrap();
    assert_ne!(fresh.id, first.id, "the deleted row does not take the name");
    let ignored = Label::repo()
        .insert_or_ignore(db, new("rust", 4), Label::ON_NAME)
        .await
        .unwrap();
    assert!(ignored.is_none());
    let many = Label::repo()
        .upsert_many(db, vec![new("rust", 5), new("go", 1)], Label::ON_NAME)
        .await
        .unwrap();
    assert_eq!(many[0].id, fresh.id);
    assert_eq!(
        Label::repo().count(db, Filter::all()).await.unwrap(),
        3,
        "the deleted rust, the live rust, go"
    );
}
