//! A gRPC client for the operator commands, with the API key attached to every call.

use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct BearerKey(MetadataValue<tonic::metadata::Ascii>);

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

/// A channel to `endpoint` that presents `api_key` on every call: what
/// every command's client is made of.
pub type Authorized = InterceptedService<Channel, BearerKey>;

pub async fn authorized(endpoint: &str, api_key: &str) -> anyhow::Result<Authorized> {
    let channel = connect(endpoint).await?;
    let value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {api_key}").parse()?;
    Ok(InterceptedService::new(channel, BearerKey(value)))
}

pub type Wallet = WalletServiceClient<Authorized>;

pub async fn wallet(endpoint: &str, api_key: &str) -> anyhow::Result<Wallet> {
    Ok(WalletServiceClient::new(authorized(endpoint, api_key).await?))
}

pub type Admin = reservoir_proto::wallet::admin_service_client::AdminServiceClient<Authorized>;

pub async fn admin(endpoint: &str, api_key: &str) -> anyhow::Result<Admin> {
    Ok(Admin::new(authorized(endpoint, api_key).await?))
}

pub type Metering = reservoir_proto::metering::metering_service_client::MeteringServiceClient<Authorized>;

pub async fn metering(endpoint: &str, api_key: &str) -> anyhow::Result<Metering> {
    Ok(Metering::new(authorized(endpoint, api_key).await?))
}
