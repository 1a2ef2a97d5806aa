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
mod start;

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
    let stages: Vec<_> = match kind {
        Kind::Registry => Vec::new(),
        Kind::Pipeline => args.entries.iter().map(|entry| parse::stage_attrs(&entry.attrs, &mut errors)).collect(),
    };
    validate::syntax(kind, &item, &args, &stages, &mut errors);
    let model = model::build(kind, args, stages, item);
    validate::check(&model, &mut errors);
    match errors.finish() {
        Ok(()) => registry::expand(&model),
        Err(error) => errors::with_item(input, error),
    }
}
