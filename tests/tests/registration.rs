//! `#[derive(Record)]` registers every record type: one defined only here,
//! in a test crate, is seen by `schema` and `check` with no list to edit,
//! and so are its rename hints.

use chrono::{DateTime, Utc};
use mandrake_storage::migrate::Migrations;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Record, registered_renames, registered_tables};
use uuid::Uuid;

/// A table no list names (its hints name a table no migration made, so
/// `check` creates it).
#[derive(Record, Clone)]
#[record(renamed_from = "widgets")]
pub struct Gadget {
    pub id: Uuid,
    #[record(references = "conversations", on_delete = "cascade")]
    pub conversation_id: Uuid,
    #[record(renamed_from = "name")]
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[tokio::test]
async fn a_record_defined_only_in_a_test_crate_is_seen_by_schema_and_check() {
    let tables = mandrake_types::tables();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"gadgets"), "{names:?}");
    for mandrake in [
        "conversations",
        "messages",
        "providers",
        "models",
        "tool_configs",
        "tool_results",
    ] {
        assert!(
            names.contains(&mandrake),
            "{mandrake} missing from {names:?}"
        );
    }
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
    assert!(
        position("conversations") < position("gadgets"),
        "referenced tables first"
    );
    assert_eq!(registered_tables().len(), tables.len());
    assert_eq!(Gadget::schema().name, "gadgets");

    // `schema` prints it.
    let ddl = mandrake_storage::schema::ddl::create_schema(&tables);
    assert!(ddl.contains(r#"CREATE TABLE "gadgets""#), "{ddl}");
    // `check` finds it missing from the migrations.
    let t = TestDb::empty().await.unwrap();
    let root = mandrake_storage::cluster::workspace_root().unwrap();
    let migrations = Migrations::from_dir(root.join("migrations")).unwrap();
    let renames = registered_renames();
    assert_eq!(renames.table_from("gadgets"), Some("widgets"));
    assert_eq!(renames.column_from("gadgets", "label"), Some("name"));
    let plan = mandrake_cli::scaffold::check(&t.url(), &migrations, &tables, &renames)
        .await
        .unwrap();
    let steps: Vec<&str> = plan.steps.iter().map(|s| s.description.as_str()).collect();
    assert!(
        steps.iter().any(|s| s.contains("gadgets")),
        "check sees the unmigrated table: {steps:?}"
    );
}
