package release

import "encoding/base64"

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func unb64(s string) ([]byte, error) { return base64.StdEncoding.Strict().DecodeString(s) }
