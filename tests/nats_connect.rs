//! Connecting to a real `nats-server`: credentials right, wrong and missing,
//! an unreachable server, an unreadable credentials file. A refused
//! credential is an error at once (one attempt, no retry loop) whose message
//! says so and holds no secret.

#![cfg(feature = "nats")]

mod support;

use std::time::Duration;

use futures::StreamExt;
use genflow::nats::{Codec, Connect, NatsError};
use support::nats_server::NatsServer;

/// Longer than any single attempt needs on loopback: a connect that does not
/// return by then is retrying.
const NO_RETRY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_right_token_connects_and_messages_flow() {
    let server = NatsServer::start_with_token("right-token");
    let client = Connect::new(server.url()).token("right-token").name("genflow-test").connect().await.unwrap();
    let mut numbers = client.subscribe("numbers").await.unwrap();
    client.publish("numbers", Codec::MessagePack.encode(&[1u32, 2, 3]).unwrap()).await.unwrap();
    let message = tokio::time::timeout(NO_RETRY, numbers.next()).await.unwrap().unwrap();
    assert_eq!(Codec::MessagePack.decode::<Vec<u32>>(&message.payload).unwrap(), [1, 2, 3]);
    // JetStream is on: a stream stores what is published to it.
    let jetstream = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        name: "NUMBERS".into(),
        subjects: vec!["stored.>".into()],
        ..Default::default()
    };
    let mut stream = jetstream.create_stream(config).await.unwrap();
    let ack = jetstream.publish("stored.1", Codec::Json.encode(&7u32).unwrap()).await.unwrap().await.unwrap();
    assert_eq!((ack.stream.as_str(), ack.sequence), ("NUMBERS", 1));
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_at_once_without_showing_it() {
    let server = NatsServer::start_with_token("right-token");
    for connect in [Connect::new(server.url()).token("wrong-token"), Connect::new(server.url())] {
        let error =
            tokio::time::timeout(NO_RETRY, connect.connect()).await.expect("one attempt, no retries").unwrap_err();
        assert!(matches!(error, NatsError::Connect { auth: true, .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains(&format!("NATS server {} refused the credentials", server.url())), "{text}");
        assert!(!text.contains("wrong-token") && !text.contains("right-token"), "{text}");
    }
}

#[tokio::test]
async fn a_server_that_is_not_there_is_an_error_not_an_auth_error() {
    // A port nobody listens on: the server was stopped.
    let url = NatsServer::start().url();
    let error = tokio::time::timeout(NO_RETRY, Connect::new(&url).timeout(Duration::from_secs(2)).connect())
        .await
        .expect("one attempt, no retries")
        .unwrap_err();
    assert!(matches!(error, NatsError::Connect { auth: false, .. }), "{error:?}");
    assert!(error.to_string().starts_with(&format!("cannot connect to the NATS server {url}: ")), "{error}");
}

#[tokio::test]
async fn a_missing_credentials_file_is_named_in_the_error() {
    let server = NatsServer::start();
    let path = server.store().join("missing.creds");
    let error = Connect::new(server.url()).credentials_file(&path).connect().await.unwrap_err();
    assert!(matches!(&error, NatsError::Credentials { path: p, .. } if *p == path), "{error:?}");
    assert!(error.to_string().starts_with(&format!("cannot read the NATS credentials file {}: ", path.display())));
}

#[tokio::test]
async fn user_and_password_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("users.conf");
    std::fs::write(&config, "authorization { users = [ { user: ingest, password: \"pw-1\" } ] }\n").unwrap();
    let server = NatsServer::start_with(&["-c", config.to_str().unwrap()]);
    Connect::new(server.url()).user_password("ingest", "pw-1").connect().await.unwrap();
    let error = Connect::new(server.url()).user_password("ingest", "pw-2").connect().await.unwrap_err();
    assert!(matches!(error, NatsError::Connect { auth: true, .. }), "{error:?}");
    assert!(!error.to_string().contains("pw-"), "{error}");
}
