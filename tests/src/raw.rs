//! Calls any RPC by its path with raw protobuf bytes, so that tests can be
//! generated from the service descriptors (every method, no hand-written
//! list) and can send what no generated client would.

use bytes::{Buf, BufMut};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder and decoder of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> Self::Encoder {
        RawBytes
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One RPC of the contracts, from the descriptors.
#[derive(Debug, Clone)]
pub struct Method {
    /// `/conveyor.v1.Service/Method`.
    pub path: String,
    /// The method's name.
    pub name: String,
    /// Fully qualified input message type, without the leading dot.
    pub input: String,
    /// The client sends a stream.
    pub client_streaming: bool,
    /// The server answers with a stream.
    pub server_streaming: bool,
}

/// The descriptor set of the contracts.
pub fn descriptors() -> prost_types::FileDescriptorSet {
    prost_types::FileDescriptorSet::decode(conveyor_api::FILE_DESCRIPTOR_SET)
        .expect("the contracts' descriptor set decodes")
}

/// Every RPC of every `conveyor.*` service.
pub fn methods() -> Vec<Method> {
    let mut methods = Vec::new();
    for file in descriptors().file {
        let package = file.package().to_string();
        for service in &file.service {
            for method in &service.method {
                methods.push(Method {
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    name: method.name().to_string(),
                    input: method.input_type().trim_start_matches('.').to_string(),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    methods.sort_by(|a, b| a.path.cmp(&b.path));
    methods
}

/// The field number of `field` in message type `message` (fully qualified,
/// no leading dot), if it has one.
pub fn field_number(message: &str, field: &str) -> Option<i32> {
    for file in descriptors().file {
        let package = file.package().to_string();
        for descriptor in &file.message_type {
            if format!("{package}.{}", descriptor.name()) == message {
                return descriptor
                    .field
                    .iter()
                    .find(|candidate| candidate.name() == field)
                    .map(|candidate| candidate.number());
            }
        }
    }
    None
}

/// A message holding only string field `number` = `value`.
pub fn string_field(number: i32, value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::string::encode(number as u32, &value.to_string(), &mut out);
    out
}

/// Calls `path` with `body` (one message; for a client stream, a stream of
/// that one message kept open) and returns the status the call ended or
/// started with: `Ok(())` when the server accepted it (a unary OK, or a
/// stream whose first answer is a message).
pub async fn call(
    channel: Channel,
    method: &Method,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<(), Status> {
    call_with(
        channel,
        method,
        body,
        token,
        std::time::Duration::from_millis(300),
    )
    .await
}

/// [`call`], waiting at most `stream_wait` for a server stream's first
/// answer (silence then counts as an open, accepted stream).
pub async fn call_with(
    channel: Channel,
    method: &Method,
    body: Vec<u8>,
    token: Option<&str>,
    stream_wait: std::time::Duration,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery = method.path.parse().expect("a path");
    fn authorize<T>(request: &mut tonic::Request<T>, token: Option<&str>) {
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
        }
    }
    let timeout = std::time::Duration::from_secs(10);
    match (method.client_streaming, method.server_streaming) {
        (false, false) => {
            let mut request = tonic::Request::new(body);
            authorize(&mut request, token);
            request.set_timeout(timeout);
            grpc.unary(request, path, RawCodec).await.map(|_| ())
        }
        (false, true) => {
            let mut request = tonic::Request::new(body);
            authorize(&mut request, token);
            let response = grpc.server_streaming(request, path, RawCodec).await?;
            // Started: the call got through; a first message or a status
            // within a short wait says more, silence means an open watch.
            let mut stream = response.into_inner();
            match tokio::time::timeout(stream_wait, stream.message()).await {
                Ok(Err(status)) => Err(status),
                _ => Ok(()),
            }
        }
        (true, _) => {
            // Keep the client's side open: a closed stream ends a session
            // before the server has answered the first message.
            let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
            sender.send(body).await.expect("queued");
            let mut request =
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
            authorize(&mut request, token);
            let response = grpc.streaming(request, path, RawCodec).await?;
            let mut stream = response.into_inner();
            let first = tokio::time::timeout(timeout, stream.message()).await;
            drop(sender);
            match first {
                Ok(Ok(Some(_))) => Ok(()),
                Ok(Ok(None)) => Err(Status::cancelled("stream ended without an answer")),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded("no answer on the stream")),
            }
        }
    }
}
