//! A gRPC client for the operator commands, with the API key attached to every call.

use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct BearerKey(MetadataValue<tonic::metadata::Ascii>);

impl BearerKey {
    pub fn new(value: MetadataValue<tonic::metadata::Ascii>) -> Self {
        Self(value)
    }
}

impl tonic::service::Interceptor for BearerKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel to `endpoint`, or an error that names it and what to check.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    use anyhow::Context;
    reservoir_common::tls::endpoint(endpoint)?.connect().await.with_context(|| {
        format!("cannot reach {endpoint}: is the suite running (`reservoir up`), and is this its address (--endpoint)?")
    })
}

pub type Wallet = WalletServiceClient<InterceptedService<Channel, BearerKey>>;

pub async fn wallet(endpoint: &str, api_key: &str) -> anyhow::Result<Wallet> {
    let channel = connect(endpoint).await?;
    let value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {api_key}").parse()?;
    Ok(WalletServiceClient::with_interceptor(channel, BearerKey(value)))
}

pub type Admin =
    reservoir_proto::wallet::admin_service_client::AdminServiceClient<InterceptedService<Channel, BearerKey>>;

pub async fn admin(endpoint: &str, api_key: &str) -> anyhow::Result<Admin> {
    let channel = connect(endpoint).await?;
    let value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {api_key}").parse()?;
    Ok(reservoir_proto::wallet::admin_service_client::AdminServiceClient::with_interceptor(channel, BearerKey(value)))
}

pub type Metering =
    reservoir_proto::metering::metering_service_client::MeteringServiceClient<InterceptedService<Channel, BearerKey>>;

pub async fn metering(endpoint: &str, api_key: &str) -> anyhow::Result<Metering> {
    let channel = connect(endpoint).await?;
    let value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {api_key}").parse()?;
    Ok(reservoir_proto::metering::metering_service_client::MeteringServiceClient::with_interceptor(
        channel,
        BearerKey(value),
    ))
}
