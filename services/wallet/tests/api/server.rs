use std::time::Duration;

use reservoir_testing::Backend;
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::*;

#[tokio::test]
async fn health_is_served_without_a_key() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let mut health = HealthClient::new(channel(app.address).await);
    let response = health
        .check(HealthCheckRequest { service: reservoir_wallet::app::SERVICE_NAME.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status, ServingStatus::Serving as i32);
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_wallet_in_both_protocol_versions() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(app.address).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        assert!(list.service.iter().any(|service| service.name == reservoir_wallet::app::SERVICE_NAME));
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(app.address).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        assert!(list.service.iter().any(|service| service.name == reservoir_wallet::app::SERVICE_NAME));
    }
    app.stop().await;
}

#[tokio::test]
async fn stopping_ends_open_event_streams_instead_of_waiting_for_them() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let mut stream = app
        .client
        .clone()
        .watch_events(reservoir_proto::wallet::WatchEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("the server stops promptly");
    tokio::time::timeout(Duration::from_secs(5), reader).await.expect("the stream ended").unwrap();
}
