//go:build linux

package confine

import "testing"

// TestLookupNumericUser: a numeric user or group needs no /etc/passwd or
// /etc/group entry (65532 is the distroless "nonroot", absent on most
// hosts); names still need one.
func TestLookupNumericUser(t *testing.T) {
	for _, c := range []struct {
		user, group string
		uid, gid    int
	}{
		{"65532", "", 65532, 65532},
		{"65532", "65533", 65532, 65533},
		{"", "65533", -1, 65533},
		{"0", "", 0, 0},
	} {
		uid, gid, err := lookupUser(c.user, c.group)
		if err != nil || uid != c.uid || gid != c.gid {
			t.Errorf("lookupUser(%q, %q) = %d, %d, %v; want %d, %d", c.user, c.group, uid, gid, err, c.uid, c.gid)
		}
	}
	for _, bad := range [][2]string{{"no-such-user-wasmlet", ""}, {"-1", ""}, {"4294967295", ""}, {"65532", "no-such-group-wasmlet"}} {
		if _, _, err := lookupUser(bad[0], bad[1]); err == nil {
			t.Errorf("lookupUser(%q, %q) succeeded", bad[0], bad[1])
		}
	}
}
