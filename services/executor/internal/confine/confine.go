package confine

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Config says what the executor may keep. The zero value confines
// nothing.
type Config struct {
	// ReadWrite are the directories the executor writes: its state dir,
	// the directory of its socket, the pods' mount roots. Missing ones
	// are created (0700) before the rules are made, since a rule holds
	// an inode.
	ReadWrite []string
	// ReadOnly are files or directories it reads beyond the system's
	// (TLS files' directories, which may be rotated by rename). Missing
	// ones are left out.
	ReadOnly []string
	// Connect are the directories of unix sockets it connects to (the
	// registry cache). Only Landlock ABI 9 and later restrict connect.
	Connect []string

	// Own are directories given, with all they hold, to User and Group
	// before the executor becomes them: its state dir, which an earlier
	// executor as root may have filled.
	Own []string

	// User and Group (names or numbers), when not empty, are the
	// credentials the executor runs as (Group defaults to User's primary
	// group); supplementary groups are dropped. Needs CAP_SETUID/SETGID.
	User, Group string
	// IsolateNetwork moves the executor into a network namespace of its
	// own, with no interface but a loopback that is down: it can reach
	// nothing over IP, only unix sockets by path. Needs CAP_SYS_ADMIN.
	IsolateNetwork bool
	// Landlock limits the file system to the paths above and the system
	// files the executor reads, where the kernel has Landlock.
	Landlock bool
	// Seccomp loads the allow-list of system calls (implies no_new_privs).
	Seccomp bool
}

// Status is what confines the running process.
type Status struct {
	NoNewPrivs bool
	Seccomp    bool
	// LandlockABI is the Landlock ABI version whose file system rights
	// are enforced; 0 when none are, LandlockWhy then says why.
	LandlockABI     int
	LandlockWhy     string
	UID, GID        int
	NetworkIsolated bool
}

// Confined reports whether anything confines the process.
func (s Status) Confined() bool {
	return s.NoNewPrivs || s.Seccomp || s.LandlockABI > 0 || s.NetworkIsolated
}

// String says in words what confines the process and what does not.
func (s Status) String() string {
	if !s.Confined() && s.LandlockWhy == "" {
		return fmt.Sprintf("not confined (uid %d, gid %d)", s.UID, s.GID)
	}
	var parts []string
	if s.NoNewPrivs {
		parts = append(parts, "no_new_privs")
	}
	if s.Seccomp {
		parts = append(parts, "seccomp allow-list (other system calls fail with EPERM)")
	} else {
		parts = append(parts, "no seccomp filter")
	}
	if s.LandlockABI > 0 {
		parts = append(parts, fmt.Sprintf("Landlock ABI %d (file system limited to the state dir, sockets, mount roots and read-only system files)", s.LandlockABI))
	} else {
		parts = append(parts, "no Landlock: "+s.LandlockWhy)
	}
	if s.NetworkIsolated {
		parts = append(parts, "own network namespace (no interface up)")
	}
	who := fmt.Sprintf("uid %d, gid %d", s.UID, s.GID)
	if s.UID == 0 {
		who += " (root: give --run-as-user for an unprivileged one)"
	}
	return strings.Join(append(parts, who), "; ")
}

// encode and decode carry the Status across the execve.
func (s Status) encode() string {
	v := url.Values{}
	v.Set("nnp", strconv.FormatBool(s.NoNewPrivs))
	v.Set("landlock", strconv.Itoa(s.LandlockABI))
	v.Set("why", s.LandlockWhy)
	v.Set("netns", strconv.FormatBool(s.NetworkIsolated))
	v.Set("uid", strconv.Itoa(s.UID))
	v.Set("gid", strconv.Itoa(s.GID))
	return v.Encode()
}

func decode(text string) (Status, error) {
	v, err := url.ParseQuery(text)
	if err != nil {
		return Status{}, err
	}
	var s Status
	if s.NoNewPrivs, err = strconv.ParseBool(v.Get("nnp")); err != nil {
		return Status{}, err
	}
	if s.LandlockABI, err = strconv.Atoi(v.Get("landlock")); err != nil {
		return Status{}, err
	}
	if s.NetworkIsolated, err = strconv.ParseBool(v.Get("netns")); err != nil {
		return Status{}, err
	}
	if s.UID, err = strconv.Atoi(v.Get("uid")); err != nil {
		return Status{}, err
	}
	if s.GID, err = strconv.Atoi(v.Get("gid")); err != nil {
		return Status{}, err
	}
	s.LandlockWhy = v.Get("why")
	return s, nil
}
