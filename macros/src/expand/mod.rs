//! Model → code.

use proc_macro2::TokenStream;

use crate::{
    errors::{self, Errors},
    model::{self, Kind},
    parse, validate,
};

mod local;
mod pipeline;
mod registry;

/// The whole expansion of `make_registry` (and of the registry part of
/// `pipeline`).
pub(crate) fn registry(args: TokenStream, input: TokenStream, kind: Kind) -> TokenStream {
    let item = match parse::item(input.clone()) {
        Ok(item) => item,
        Err(error) => return errors::with_item(input, error),
    };
    let args = match parse::args(args) {
        Ok(args) => args,
        Err(error) => return errors::with_item(input, error),
    };
    let mut errors = Errors::default();
    let model = model::build(kind, args, item, &mut errors);
    validate::check(&model, &mut errors);
    match errors.finish() {
        Ok(()) => registry::expand(&model),
        Err(error) => errors::with_item(input, error),
    }
}
