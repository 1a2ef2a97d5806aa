//! Procedural macros for genflow: `make_registry` and `pipeline`. Use them
//! through the `genflow` crate, which re-exports and documents them.
//!
//! Each macro runs four phases, one module each: `parse` reads the tokens
//! (the entries, the struct, the stage attributes) as written, `validate`
//! holds every check (on that syntax, then on the model), `model` turns
//! checked syntax into a description of the registry, and `expand` writes
//! the code. Every error is collected and reported at once, at its span.

#![warn(missing_docs)]

use proc_macro::TokenStream;

mod errors;
mod expand;
mod fallback;
mod model;
mod parse;
mod stage;
mod validate;

/// Declares a registry of servers. See `genflow::make_registry`.
#[proc_macro_attribute]
pub fn make_registry(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::registry(args.into(), input.into(), model::Kind::Registry).into()
}

/// Declares a pipeline of stages. See `genflow::pipeline`.
#[proc_macro_attribute]
pub fn pipeline(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::registry(args.into(), input.into(), model::Kind::Pipeline).into()
}

/// Declares a pipeline stage from a function or a short `impl Stage`. See `genflow::stage`.
#[proc_macro_attribute]
pub fn stage(args: TokenStream, input: TokenStream) -> TokenStream {
    stage::expand(args.into(), input.into()).into()
}
