//! Full-text search over the fields with `#[record(search)]`: the fields a
//! search ranks by, its options, and the SQL of a ranked search with
//! snippets (built once per shape, like every other statement).

use crate::query::filter::{Column, Node, Search, condition, narrowed, tsquery};
use crate::schema::{LookupKind, TableSchema, search_vector};
use crate::sql::{quote_ident, quote_literal};

/// The weight of each field of a search, in the order given: the first
/// counts most (PostgreSQL's own A, B, C, D weights).
const WEIGHTS: [f32; 4] = [1.0, 0.4, 0.2, 0.1];

/// The fields a [`Repo::search`](crate::Repo::search) looks in: one field
/// with `#[record(search)]`, or a tuple of up to four. A row is a hit when
/// any of them matches; its rank adds theirs, the first field weighing
/// most (1.0, 0.4, 0.2, 0.1); its snippet comes from the first that matches.
pub trait SearchFields<T> {
    /// `(column index, configuration)` of each field, in order.
    #[doc(hidden)]
    fn fields(&self) -> Vec<(usize, &'static str)>;
}

impl<T, V> SearchFields<T> for Column<T, V, Search> {
    fn fields(&self) -> Vec<(usize, &'static str)> {
        vec![(self.index(), self.config())]
    }
}

macro_rules! search_tuple {
    ($($v:ident $i:tt),+) => {
        impl<T, $($v),+> SearchFields<T> for ($(Column<T, $v, Search>,)+) {
            fn fields(&self) -> Vec<(usize, &'static str)> {
                vec![$((self.$i.index(), self.$i.config())),+]
            }
        }
    };
}
search_tuple!(A 0, B 1);
search_tuple!(A 0, B 1, C 2);
search_tuple!(A 0, B 1, C 2, D 3);

/// How many hits a search returns, from where, and how its snippets mark
/// the matched words.
///
/// ```
/// use mandrake_storage::SearchOptions;
/// let options = SearchOptions::new().limit(10).offset(10).markers("<mark>", "</mark>");
/// ```
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub(crate) limit: u32,
    pub(crate) offset: u32,
    pub(crate) start: String,
    pub(crate) stop: String,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions::new()
    }
}

impl SearchOptions {
    /// 20 hits from the best one, words marked `<b>…</b>`.
    pub fn new() -> SearchOptions {
        SearchOptions {
            limit: 20,
            offset: 0,
            start: "<b>".into(),
            stop: "</b>".into(),
        }
    }

    /// At most `n` hits.
    pub fn limit(mut self, n: u32) -> SearchOptions {
        self.limit = n;
        self
    }

    /// Skips the first `n` hits: the next page.
    pub fn offset(mut self, n: u32) -> SearchOptions {
        self.offset = n;
        self
    }

    /// What goes before and after each matched word of a snippet.
    pub fn markers(mut self, start: &str, stop: &str) -> SearchOptions {
        self.start = start.to_owned();
        self.stop = stop.to_owned();
        self
    }

    /// `ts_headline`'s options: the markers quoted as it reads them (a
    /// double quote is doubled), one fragment of up to 35 words.
    pub(crate) fn headline(&self) -> String {
        let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        format!(
            "StartSel={}, StopSel={}, MaxWords=35, MinWords=15, MaxFragments=1",
            quoted(&self.start),
            quoted(&self.stop)
        )
    }
}

/// One hit of a search: the record, how well it matched (higher is better)
/// and the best fragment of its text with the matched words marked.
#[derive(Debug, Clone)]
pub struct Hit<T> {
    /// The row.
    pub record: T,
    /// `ts_rank`, summed over the fields with their weights.
    pub rank: f32,
    /// The fragment around the match, matched words between the markers.
    pub snippet: String,
}

/// The shape of a search: its fields and the filter's shape.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SearchShape {
    pub(crate) fields: Vec<(usize, &'static str)>,
    pub(crate) filter: Node,
}

/// The SQL of a search. `$1` is the query text; the filter's values
/// follow, then the limit, the offset and the headline options. Each
/// field's query is parsed once, in `FROM`; the inner query finds and ranks
/// the page of hits through the fields' GIN indexes, and only its rows get
/// a snippet, since `ts_headline` reads the whole text. Ties go newest
/// first.
pub(crate) fn search_sql(schema: &TableSchema, columns: &str, shape: &SearchShape) -> String {
    let table = crate::sql::quote_table(&schema.name);
    let each = |f: &dyn Fn(usize, usize, &str) -> String| -> Vec<String> {
        shape
            .fields
            .iter()
            .enumerate()
            .map(|(i, &(column, config))| f(i, column, config))
            .collect()
    };
    let vector = |column: usize| quote_ident(&search_vector(&schema.columns[column].name));
    let queries = each(&|i, _, config| format!("{} AS __q{i}", tsquery(config, "$1")));
    let matched = each(&|i, column, _| format!("{} @@ __q{i}", vector(column)));
    // On a tenant-scoped table each field's lookup narrows first; its query
    // is parsed again for it, since the lookup must not depend on the row
    // (then it runs once, not once per row).
    let found = each(&|i, column, config| {
        let lookup = schema.lookup(&schema.columns[column].name, LookupKind::Matches);
        narrowed(lookup, &tsquery(config, "$1"), matched[i].clone())
    });
    let rank =
        each(&|i, column, _| format!("ts_rank({}, __q{i}) * {}", vector(column), WEIGHTS[i]));
    let carried = each(&|i, _, _| format!("__q{i}"));
    let which = match found.len() {
        1 => "0".to_owned(),
        _ => format!(
            "CASE {} END",
            each(&|i, _, _| format!("WHEN {} THEN {i}", matched[i])).join(" ")
        ),
    };
    let mut conditions = vec![format!("({})", found.join(" OR "))];
    let mut param = 1;
    if shape.filter != Node::All {
        conditions.push(condition(schema, &shape.filter, &mut param));
    }
    let (limit, offset, options) = (param + 1, param + 2, param + 3);
    let snippet = each(&|i, column, config| {
        format!(
            "WHEN {i} THEN ts_headline({}::regconfig, {}, __q{i}, ${options})",
            quote_literal(config),
            quote_ident(&schema.columns[column].name),
        )
    });
    let newest = if schema.column("created_at").is_some() {
        "\"created_at\" DESC, "
    } else {
        ""
    };
    let order = format!("__rank DESC, {newest}\"id\" DESC");
    format!(
        "SELECT {columns}, __rank, COALESCE(CASE __field {} END, '') FROM (\
         SELECT {columns}, ({})::real AS __rank, {which} AS __field, {} FROM {table}, {} \
         WHERE {} ORDER BY {order} LIMIT ${limit} OFFSET ${offset}) AS hits ORDER BY {order}",
        snippet.join(" "),
        rank.join(" + "),
        carried.join(", "),
        queries.join(", "),
        conditions.join(" AND "),
    )
}
