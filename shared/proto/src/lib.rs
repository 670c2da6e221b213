//! Generated protobuf and gRPC code for the Reservoir services.

pub mod codec;

/// `reservoir.wallet.v1`.
pub mod wallet {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("reservoir.wallet.v1");
}

/// `reservoir.metering.v1`.
pub mod metering {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("reservoir.metering.v1");
}

/// `reservoir.invoicing.v1`.
pub mod invoicing {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("reservoir.invoicing.v1");
}

/// `reservoir.payments.v1`.
pub mod payments {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("reservoir.payments.v1");
}

/// `reservoir.orchestrator.v1`.
pub mod orchestrator {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("reservoir.orchestrator.v1");
}

/// Encoded `FileDescriptorSet` of every service, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("reservoir_descriptor");
