//! Keeping a test binary's expected panics out of its output.

use std::sync::Once;

/// Installs, once per test binary, a panic hook that drops the report of
/// every panic whose message (a `String` or a `&str`) contains `marker`,
/// and hands every other panic to the hook that was there before, so an
/// unexpected panic still prints. Only the first call's `marker` counts:
/// a binary has one.
pub(crate) fn quiet_panics(marker: &'static str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.contains(marker) {
                previous(info);
            }
        }));
    });
}
