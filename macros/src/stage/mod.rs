//! `#[stage]`: a pipeline stage without the `GenServer` boilerplate.
//!
//! On a function (`function.rs`) it generates a stage type that runs the
//! function on each item; on an `impl Stage for X` block (`block.rs`) it
//! moves the `GenServer` items written there into their own impl and fills
//! in the ones left out.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Item, spanned::Spanned};

mod block;
mod function;

/// Expands `#[stage]` on `input`; `args` must be empty.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<Item>(input.clone()) {
        Ok(item) => item,
        Err(error) => return with_error(input, error),
    };
    if !args.is_empty() {
        let error = syn::Error::new_spanned(
            &args,
            "`#[genflow::stage]` takes no arguments: the stage type is named after the function, and \
             the `GenServer` items go in the `impl Stage` block",
        );
        return with_error(item.into_token_stream(), error);
    }
    match item {
        Item::Fn(function) => function::expand(function),
        Item::Impl(block) => block::expand(block),
        other => {
            let error = syn::Error::new(
                other.span(),
                "`#[genflow::stage]` goes on a function (`fn name(item: In) -> Out`) or on an \
                 `impl Stage for Type` block",
            );
            with_error(other.into_token_stream(), error)
        }
    }
}

/// The item unchanged plus the error, so nothing else fails because the
/// item vanished.
fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let mut tokens = error.to_compile_error();
    tokens.extend(item);
    tokens
}
