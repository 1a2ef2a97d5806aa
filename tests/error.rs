//! The error types: traits they implement, their text, and the message they
//! hand back.

use genflow::{CallError, SendError};

/// A message type with no `Debug`, `Sync`-only-by-accident impls.
struct Opaque(#[allow(dead_code)] u8);

fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}

#[test]
fn errors_are_std_errors_without_requiring_debug_messages() {
    is_error(&CallError::Closed(Opaque(1)));
    is_error(&SendError::Full(Opaque(1)));
    assert_eq!(format!("{:?}", CallError::Closed(Opaque(1))), "Closed(..)");
    assert_eq!(format!("{:?}", CallError::<Opaque>::Timeout(None)), "Timeout(None)");
    assert_eq!(format!("{:?}", CallError::Timeout(Some(Opaque(1)))), "Timeout(..)");
    assert_eq!(format!("{:?}", CallError::<Opaque>::Panicked), "Panicked");
    assert_eq!(format!("{:?}", SendError::Full(Opaque(1))), "Full(..)");
}

#[test]
fn errors_display_lowercase_text_without_period() {
    let texts = [
        CallError::Closed(()).to_string(),
        CallError::Failed(()).to_string(),
        CallError::SelfCall(()).to_string(),
        CallError::Timeout(Some(())).to_string(),
        CallError::<()>::Timeout(None).to_string(),
        CallError::<()>::Panicked.to_string(),
        CallError::<()>::Aborted.to_string(),
        SendError::Full(()).to_string(),
        SendError::Closed(()).to_string(),
        SendError::Failed(()).to_string(),
    ];
    for text in texts {
        assert!(text.chars().next().unwrap().is_lowercase(), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
}

#[test]
fn undelivered_messages_come_back() {
    assert_eq!(CallError::Closed(1).into_message(), Some(1));
    assert_eq!(CallError::Failed(2).into_message(), Some(2));
    assert_eq!(CallError::SelfCall(3).into_message(), Some(3));
    assert_eq!(CallError::Timeout(Some(4)).into_message(), Some(4));
    assert_eq!(CallError::<u8>::Timeout(None).into_message(), None);
    assert_eq!(CallError::<u8>::Panicked.into_message(), None);
    assert_eq!(SendError::Full(5).into_message(), Some(5));
    assert_eq!(SendError::Closed(6).into_message(), Some(6));
    assert_eq!(SendError::Failed(7).map_message(|m| m * 2).into_message(), Some(14));
}

#[test]
fn error_kinds_are_queryable() {
    assert!(CallError::Timeout(Some(1)).is_timeout());
    assert!(CallError::Closed(1).is_stopped());
    assert!(CallError::Failed(1).is_stopped());
    assert!(!CallError::<u8>::Panicked.is_stopped());
    assert!(SendError::Full(1).is_full());
    assert!(SendError::Closed(1).is_stopped());
}

#[test]
fn errors_convert_into_boxed_errors() {
    fn fails() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(SendError::Closed(Opaque(0)))?
    }
    assert_eq!(fails().unwrap_err().to_string(), "receiver is not running");
}
