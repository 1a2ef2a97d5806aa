//! `docs/guide/logs.rs` holds the `Logs` pipeline that docs/guide.md shows
//! in "A pipeline", for the guide's later examples, which include it with
//! one hidden line. The file and the code the guide shows must not drift
//! apart: each paragraph of one (a run of lines between blank lines) is
//! found in the other.

const GUIDE: &str = include_str!("../docs/guide.md");
const LOGS: &str = include_str!("../docs/guide/logs.rs");

/// The runs of non-blank lines of `code`, each joined with `\n`.
fn paragraphs(code: &str) -> Vec<String> {
    code.split("\n\n").map(|p| p.trim_matches('\n').to_string()).filter(|p| !p.is_empty()).collect()
}

/// The code of `docs/guide/logs.rs` after its header comment.
fn logs_code() -> &'static str {
    let start = LOGS.find("\nuse ").expect("logs.rs starts its code with `use` lines");
    &LOGS[start + 1..]
}

/// The items of the first Rust example of the section "A pipeline", up to
/// its `main`.
fn guide_pipeline() -> &'static str {
    let section = GUIDE.split("\n## A pipeline\n").nth(1).expect("docs/guide.md has \"A pipeline\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let code = section.split("```rust\n").nth(1).expect("\"A pipeline\" has a Rust example");
    let end = code.find("#[tokio::main").expect("the example has a `main`");
    &code[..end]
}

#[test]
fn the_guide_shows_every_item_of_the_included_pipeline() {
    let shown = guide_pipeline();
    for paragraph in paragraphs(logs_code()) {
        assert!(shown.contains(&paragraph), "\"A pipeline\" in docs/guide.md does not show:\n{paragraph}");
    }
}

#[test]
fn the_included_pipeline_has_every_item_the_guide_shows() {
    let included = logs_code();
    for paragraph in paragraphs(guide_pipeline()) {
        // The example's own imports for its `main` are not part of the pipeline.
        let items: Vec<&str> = paragraph.lines().filter(|line| !line.starts_with("use futures::")).collect();
        let items = items.join("\n");
        assert!(
            items.is_empty() || included.contains(&items),
            "docs/guide/logs.rs lacks what \"A pipeline\" in docs/guide.md shows:\n{items}"
        );
    }
}
