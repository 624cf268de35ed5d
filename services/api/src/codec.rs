//! The protobuf codec of every generated service: tonic's prost codec, except
//! that a message that does not decode (malformed bytes, a string that is not
//! UTF-8) is `INVALID_ARGUMENT`, the caller's fault, not `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// [`ProstCodec`] with decode errors reported as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ConveyorCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ConveyorCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ConveyorCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ConveyorDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ConveyorDecoder { _type: PhantomData }
    }
}

/// Decodes one message; see [`ConveyorCodec`].
#[derive(Debug, Clone)]
pub struct ConveyorDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ConveyorDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            Status::invalid_argument(format!(
                "the message is not valid protobuf for this method ({error}); \
                 send it with a client generated from Conveyor's proto/ files"
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
