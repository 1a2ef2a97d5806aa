//! Procedural macros for [genflow](https://docs.rs/genflow): `make_registry`
//! and `pipeline`. Use them through the `genflow` crate, which re-exports
//! them and documents them.
//!
//! Each macro runs four phases, one module each: [`parse`] reads the tokens,
//! [`model`] turns them into a description of the registry, [`validate`]
//! checks it (reporting every error at once, each at its span), and
//! [`expand`] writes the code.

use proc_macro::TokenStream;

mod errors;
mod expand;
mod model;
mod parse;
mod validate;

/// Declares a registry of servers. Documented in the `genflow` crate.
#[proc_macro_attribute]
pub fn make_registry(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::registry(args.into(), input.into(), model::Kind::Registry).into()
}

/// Declares a pipeline of stages. Documented in the `genflow` crate.
#[proc_macro_attribute]
pub fn pipeline(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::registry(args.into(), input.into(), model::Kind::Pipeline).into()
}
