package membership

import (
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/tutti-gcs/tutti/client"
)

// TestEmptyKeyringIsRefused: memberlist encrypts only when the keyring
// holds a key; with an empty one (memberlist.NewKeyring(nil, nil), or a
// keyring whose keys were never added) gossip ran in plaintext and a
// process without any key could join, while the operator had configured
// encryption. Such a config must be refused with a clear error.
func TestEmptyKeyringIsRefused(t *testing.T) {
	empty, err := memberlist.NewKeyring(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, kr := range map[string]*memberlist.Keyring{"NewKeyring(nil, nil)": empty, "zero Keyring": {}} {
		cfg := Config{ID: "a", Client: &client.Client{}, Bind: "127.0.0.1:0", Keyring: kr}
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "Keyring") {
			t.Errorf("%s: Validate = %v, want an error about the empty Keyring", name, err)
		}
	}
	kr, err := memberlist.NewKeyring(nil, []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	if err := (Config{ID: "a", Client: &client.Client{}, Bind: "127.0.0.1:0", Keyring: kr}).Validate(); err != nil {
		t.Fatalf("a keyring with a key: %v", err)
	}
}
