//! Compile-time behaviour of the macros: what must compile, and the errors
//! (with their spans) for what must not. Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/registry/pass/*.rs");
    t.compile_fail("tests/ui/registry/fail/*.rs");
    t.pass("tests/ui/pipeline/pass/*.rs");
    t.compile_fail("tests/ui/pipeline/fail/*.rs");
}
