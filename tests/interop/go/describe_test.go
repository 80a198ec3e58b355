package interop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// observations is what TestObserve writes: flat names to printable values, so the pytest side
// can put two systems' answers side by side. Names starting with "_" carry data between runs
// and are not compared.
type observations map[string]string

func (o observations) set(name string, value any) {
	switch v := value.(type) {
	case string:
		o[name] = v
	case []string:
		o[name] = strings.Join(v, ",")
	default:
		o[name] = fmt.Sprint(v)
	}
}

var keyUsageNames = []struct {
	bit  x509.KeyUsage
	name string
}{
	{x509.KeyUsageDigitalSignature, "digitalSignature"},
	{x509.KeyUsageContentCommitment, "contentCommitment"},
	{x509.KeyUsageKeyEncipherment, "keyEncipherment"},
	{x509.KeyUsageDataEncipherment, "dataEncipherment"},
	{x509.KeyUsageKeyAgreement, "keyAgreement"},
	{x509.KeyUsageCertSign, "keyCertSign"},
	{x509.KeyUsageCRLSign, "cRLSign"},
}

var extKeyUsageNames = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageServerAuth: "serverAuth",
	x509.ExtKeyUsageClientAuth: "clientAuth",
}

// describeCert records the shape of a certificate, not its values: which fields and extensions
// it has, how long it lives, which names it carries.
func (o observations) describeCert(prefix string, cert *x509.Certificate) {
	o.set(prefix+".version", cert.Version)
	o.set(prefix+".subject_attributes", nameAttributes(cert))
	o.set(prefix+".subject_o_c", fmt.Sprintf("O=%v C=%v", cert.Subject.Organization, cert.Subject.Country))
	o.set(prefix+".signature_algorithm", cert.SignatureAlgorithm.String())
	o.set(prefix+".public_key", publicKeyKind(cert.PublicKey))
	var usages []string
	for _, usage := range keyUsageNames {
		if cert.KeyUsage&usage.bit != 0 {
			usages = append(usages, usage.name)
		}
	}
	o.set(prefix+".key_usage", usages)
	var extUsages []string
	for _, usage := range cert.ExtKeyUsage {
		extUsages = append(extUsages, extKeyUsageNames[usage])
	}
	sort.Strings(extUsages)
	o.set(prefix+".ext_key_usage", extUsages)
	o.set(prefix+".basic_constraints", fmt.Sprintf("valid=%v ca=%v maxpathlen=%d",
		cert.BasicConstraintsValid, cert.IsCA, cert.MaxPathLen))
	var uris []string
	for _, uri := range cert.URIs {
		uris = append(uris, uri.String())
	}
	o.set(prefix+".uri_sans", uris)
	o.set(prefix+".dns_sans", cert.DNSNames)
	o.set(prefix+".has_subject_key_id", len(cert.SubjectKeyId) > 0)
	o.set(prefix+".serial_over_64_bits", cert.SerialNumber.BitLen() > 64)
	lifetime := cert.NotAfter.Sub(cert.NotBefore)
	o.set(prefix+".lifetime", lifetime.Round(10*time.Second).String())
	var critical, all []string
	for _, ext := range cert.Extensions {
		all = append(all, ext.Id.String())
		if ext.Critical {
			critical = append(critical, ext.Id.String())
		}
	}
	sort.Strings(all)
	sort.Strings(critical)
	o.set(prefix+".extensions", all)
	o.set(prefix+".critical_extensions", critical)
}

func nameAttributes(cert *x509.Certificate) []string {
	var types []string
	for _, attribute := range cert.Subject.Names {
		types = append(types, attribute.Type.String())
	}
	sort.Strings(types)
	return types
}

func publicKeyKind(key any) string {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	default:
		return fmt.Sprintf("%T", key)
	}
}

// describeJWT records a compact JWT's header fields and claim names, its audience's JSON type
// and its lifetime.
func (o observations) describeJWT(prefix, token string) {
	parts := strings.Split(token, ".")
	o.set(prefix+".parts", len(parts))
	if len(parts) != 3 {
		return
	}
	header := decodeSegment(parts[0])
	claims := decodeSegment(parts[1])
	o.set(prefix+".header_fields", sortedKeys(header))
	o.set(prefix+".header.alg", header["alg"])
	o.set(prefix+".header.typ", header["typ"])
	o.set(prefix+".claims", sortedKeys(claims))
	o.set(prefix+".aud_type", fmt.Sprintf("%T", claims["aud"]))
	o.set(prefix+".aud", fmt.Sprint(claims["aud"]))
	exp, _ := claims["exp"].(float64)
	iat, _ := claims["iat"].(float64)
	o.set(prefix+".exp_minus_iat", time.Duration(math.Round(exp-iat))*time.Second)
}

func decodeSegment(segment string) map[string]any {
	raw, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return map[string]any{"undecodable": err.Error()}
	}
	decoded := map[string]any{}
	decoder := json.NewDecoder(bytes.NewReader(raw))
	if err := decoder.Decode(&decoded); err != nil {
		return map[string]any{"undecodable": err.Error()}
	}
	return decoded
}

// describeJWKS records a JWT bundle's JSON: its top-level members and each key's member names.
func (o observations) describeJWKS(prefix string, raw []byte, kid string) {
	var jwks map[string]any
	if err := json.Unmarshal(raw, &jwks); err != nil {
		o.set(prefix+".json", "invalid: "+err.Error())
		return
	}
	o.set(prefix+".members", sortedKeys(jwks))
	keys, _ := jwks["keys"].([]any)
	o.set(prefix+".keys", len(keys))
	var shapes []string
	kidFound := false
	for _, key := range keys {
		fields, _ := key.(map[string]any)
		shapes = append(shapes, fmt.Sprintf("%v/%v:%s", fields["kty"], fields["crv"],
			strings.Join(sortedKeys(fields), "+")))
		kidFound = kidFound || fields["kid"] == kid
	}
	sort.Strings(shapes)
	o.set(prefix+".key_shapes", shapes)
	o.set(prefix+".has_token_kid", kidFound)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

func kindName(kind any) string {
	name := fmt.Sprintf("%T", kind)
	return strings.TrimPrefix(strings.TrimPrefix(name, "*structpb."), "Value_")
}
