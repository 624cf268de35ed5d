package conveyor

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	conveyorv1 "go.conveyor.dev/conveyor/gen/conveyor/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// JSONContentType is the content type of every payload this SDK encodes.
const JSONContentType = "application/json"

// Payload is an encoded value: bytes plus a content type.
type Payload = conveyorv1.Payload

// EncodeJSON encodes value as a JSON payload. A *Payload passes through
// as it is, so values of other content types can be sent too.
func EncodeJSON(value any) (*Payload, error) {
	if p, ok := value.(*Payload); ok && p != nil {
		return p, nil
	}
	data, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	return &Payload{Data: data, ContentType: JSONContentType}, nil
}

// DecodeJSON decodes a JSON payload into out (a pointer, as for
// [json.Unmarshal]). An empty content type counts as JSON; other content
// types are refused rather than misread. A nil or empty payload reads as
// JSON null. A nil out discards the value.
func DecodeJSON(p *Payload, out any) error {
	if p != nil && !IsJSON(p.GetContentType()) {
		return fmt.Errorf("content type %q is not json", p.GetContentType())
	}
	if out == nil {
		return nil
	}
	data := p.GetData()
	if len(data) == 0 {
		data = []byte("null")
	}
	return json.Unmarshal(data, out)
}

// IsJSON reports whether a content type is JSON: empty, application/json
// (with parameters or not) or a +json structured suffix.
func IsJSON(contentType string) bool {
	mediaType, _, _ := strings.Cut(contentType, ";")
	mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	return mediaType == "" || mediaType == JSONContentType || strings.HasSuffix(mediaType, "+json")
}

// maxProtoSeconds is the largest duration protobuf allows (10,000 years).
const maxProtoSeconds = 315_576_000_000

func durationToProto(d time.Duration) *durationpb.Duration {
	return durationpb.New(d)
}

// durationFromProto converts; absent, zero or negative is 0.
func durationFromProto(d *durationpb.Duration) time.Duration {
	if d == nil || d.GetSeconds() < 0 || (d.GetSeconds() == 0 && d.GetNanos() <= 0) {
		return 0
	}
	if d.GetSeconds() >= math.MaxInt64/int64(time.Second) || d.GetSeconds() > maxProtoSeconds {
		return time.Duration(math.MaxInt64)
	}
	return d.AsDuration()
}
