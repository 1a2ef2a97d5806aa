// The `Logs` pipeline of docs/guide.md, "A pipeline", for the guide's later
// examples that use it again: each one includes this file with a single
// hidden line, `# include!("../docs/guide/logs.rs");`, instead of repeating
// the pipeline in hidden lines, so the guide reads well as plain Markdown
// too. rustdoc resolves the path from docs/guide.md, the file the doctests
// come from (through `include_str!` in src/lib.rs).
//
// Keep it the same as the code shown in "A pipeline": tests/guide.rs checks
// that the two match, paragraph for paragraph.

use std::collections::HashMap;

use genflow::{Emitter, GenServer, Stage};

struct Entry {
    level: String,
    text: String,
}

/// Splits "LEVEL text" lines; skips lines without a text.
struct Parse;

impl GenServer for Parse {
    type Message = ();
    type Response = ();
    type Registry = Logs;
    fn new(_: Logs) -> Self {
        Parse
    }
    async fn handle_call(&mut self, _: ()) {}
    async fn handle_cast(&mut self, _: ()) {}
}

impl Stage for Parse {
    type In = String;
    type Out = Entry;

    async fn process(&mut self, line: String, out: &mut Emitter<Entry>) {
        if let Some((level, text)) = line.split_once(' ') {
            out.emit(Entry { level: level.to_string(), text: text.to_string() }).await;
        }
    }
}

/// Counts entries per level (calls ask for a level's count), and emits
/// the text of each error.
struct Count {
    per_level: HashMap<String, u64>,
}

impl GenServer for Count {
    type Message = String;
    type Response = u64;
    type Registry = Logs;

    fn new(_: Logs) -> Self {
        Count { per_level: HashMap::new() }
    }

    async fn handle_call(&mut self, level: String) -> u64 {
        self.per_level.get(&level).copied().unwrap_or(0)
    }

    async fn handle_cast(&mut self, _: String) {}
}

impl Stage for Count {
    type In = Entry;
    type Out = String;

    async fn process(&mut self, entry: Entry, out: &mut Emitter<String>) {
        *self.per_level.entry(entry.level.clone()).or_default() += 1;
        if entry.level == "ERROR" {
            out.emit(entry.text).await;
        }
    }
}

#[genflow::pipeline{ parse: Parse, count: Count }]
struct Logs;
