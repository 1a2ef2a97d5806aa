//! Collects every error of one expansion, so all are reported at once.

#[derive(Default)]
pub(crate) struct Errors {
    error: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.error {
            Some(first) => first.combine(error),
            None => self.error = Some(error),
        }
    }

    pub(crate) fn at(&mut self, span: impl quote::ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(span, message));
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.error.map_or(Ok(()), Err)
    }
}
