//! Generated code for the Conveyor contracts under `proto/`, re-exported as
//! [`pb`], plus the encoded descriptor set that gRPC reflection serves.

#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
mod generated {
    pub mod conveyor {
        pub mod v1 {
            tonic::include_proto!("conveyor.v1");
        }
        pub mod store {
            pub mod v1 {
                tonic::include_proto!("conveyor.store.v1");
            }
        }
    }
}

pub mod codec;

/// Records at rest, package `conveyor.store.v1`.
pub use generated::conveyor::store::v1 as store_pb;
/// The public contracts, package `conveyor.v1`.
pub use generated::conveyor::v1 as pb;

/// Encoded `FileDescriptorSet` of every Conveyor proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("conveyor_descriptor");
