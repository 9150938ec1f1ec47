//! Every repository call is one span (target `mandrake_storage`, named after
//! the operation) with its table, rows, time and SQLSTATE; bound values, and
//! so secrets, never reach it; a slow call is logged at WARN.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandrake_storage::testing::TestDb;
use mandrake_storage::{Error, Record};
use mandrake_types::{NewProvider, Provider, ProviderKind};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as Values};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// What was traced: one line per span or event, with every field.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let span = ctx.span(id).expect("new span");
        span.extensions_mut().insert(Fields(format!(
            "span {} target={}{}",
            attrs.metadata().name(),
            attrs.metadata().target(),
            fields.0
        )));
    }

    fn on_record(&self, id: &Id, values: &Values<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("recorded span");
        if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("closed span");
        if let Some(fields) = span.extensions().get::<Fields>() {
            self.0.lock().unwrap().push(fields.0.clone());
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(format!("event {}", event.metadata().level()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[tokio::test]
async fn spans_carry_table_rows_time_and_sqlstate_but_never_values() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = "sk-live-do-not-log-4242";
    let new = || NewProvider {
        name: "anthropic".into(),
        kind: ProviderKind::Anthropic,
        base_url: None,
        api_key: Some(secret.into()),
    };
    let provider = Provider::repo().create(db, new()).await.unwrap();
    let duplicate = Provider::repo().create(db, new()).await.unwrap_err();
    assert!(matches!(duplicate, Error::UniqueViolation { .. }));

    // A statement held up by another transaction's row lock is slow.
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM providers WHERE id = $1 FOR UPDATE")
        .bind(provider.id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        blocker.rollback().await.unwrap();
    });
    let patch = mandrake_types::ProviderPatch {
        base_url: Some(Some("https://example.invalid".into())),
        ..Default::default()
    };
    Provider::repo()
        .update(db, provider.id, patch)
        .await
        .unwrap();
    release.await.unwrap();

    let lines = captured.0.lock().unwrap().clone();
    let all = lines.join("\n");
    assert!(
        !all.contains(secret),
        "a bound value reached the trace:\n{all}"
    );
    let create = lines
        .iter()
        .find(|l| l.starts_with("span create target=mandrake_storage table=\"providers\""))
        .unwrap_or_else(|| panic!("no create span:\n{all}"));
    assert!(create.contains("rows=1"), "{create}");
    assert!(create.contains("elapsed_ms="), "{create}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("span create") && l.contains("sqlstate=\"23505\"")),
        "the failed create names its SQLSTATE:\n{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("span update") && l.contains("rows=1")),
        "{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("event WARN") && l.contains("slow statement")),
        "the blocked update was logged as slow:\n{all}"
    );
}
