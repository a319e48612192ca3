package localcluster

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
)

// Chains is a set of the host's iptables chains, each "family/table/chain"
// (e.g. "iptables/filter/KUBE-FIREWALL"): what was there before something
// that adds chains ran, so that its clean-up removes what it added and
// nothing else.
type Chains map[string]bool

// List returns the chains sorted (a snapshot's form in a file).
func (c Chains) List() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ChainsOf is the set of list (List's inverse).
func ChainsOf(list []string) Chains {
	c := Chains{}
	for _, k := range list {
		c[k] = true
	}
	return c
}

// Added returns the chains of c that are not in before, sorted.
func (c Chains) Added(before Chains) []string {
	var out []string
	for k := range c {
		if !before[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

var iptablesTables = []string{"mangle", "filter", "nat"}

// iptablesFamilies are iptables and, where the host has it, ip6tables
// (kube-proxy and the CNI plugins program both when the host has IPv6).
func iptablesFamilies() []string {
	fams := []string{"iptables"}
	if _, err := exec.LookPath("ip6tables-save"); err == nil {
		fams = append(fams, "ip6tables")
	}
	return fams
}

// saveTable is family-save -t table.
func saveTable(family, table string) (string, error) {
	out, err := exec.Command(family+"-save", "-t", table).Output()
	if err != nil {
		return "", fmt.Errorf("%s-save -t %s: %w", family, table, err)
	}
	return string(out), nil
}

// SnapshotChains returns the host's chains whose names start with prefix
// ("KUBE-", "CNI-"), in the mangle, filter and nat tables of IPv4 and, where
// the host has it, IPv6. It needs root.
func SnapshotChains(prefix string) (Chains, error) {
	set := Chains{}
	for _, family := range iptablesFamilies() {
		for _, table := range iptablesTables {
			out, err := saveTable(family, table)
			if err != nil {
				return nil, err
			}
			for _, chain := range chainsIn(out, prefix) {
				set[family+"/"+table+"/"+chain] = true
			}
		}
	}
	return set, nil
}

// RemoveNewChains deletes the chains starting with prefix that are not in
// before, with every rule of the other chains that jumps to them, in IPv4
// and IPv6; then it fails, naming them, if any such chain is left.
func RemoveNewChains(before Chains, prefix string) error {
	var errs []error
	for _, family := range iptablesFamilies() {
		if err := removeNewChains(family, before, prefix); err != nil {
			errs = append(errs, err)
		}
	}
	after, err := SnapshotChains(prefix)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if left := after.Added(before); len(left) > 0 {
		errs = append(errs, fmt.Errorf("chains left: %s", strings.Join(left, ", ")))
	}
	return errors.Join(errs...)
}

// removeNewChains deletes, in one family-restore --noflush per table, the
// chains of family starting with prefix that are not in before, and every
// rule of the other chains that jumps to them.
func removeNewChains(family string, before Chains, prefix string) error {
	for _, table := range iptablesTables {
		out, err := saveTable(family, table)
		if err != nil {
			return err
		}
		var chains []string
		for _, chain := range chainsIn(out, prefix) {
			if !before[family+"/"+table+"/"+chain] {
				chains = append(chains, chain)
			}
		}
		script := removalScript(table, out, chains)
		if script == "" {
			continue
		}
		cmd := exec.Command(family+"-restore", "--noflush")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s-restore --noflush (remove %s %v): %w: %s", family, table, chains, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// chainsIn returns the chains declared in one table's iptables-save output
// (":NAME POLICY [counters]") whose names start with prefix, in its order.
func chainsIn(save, prefix string) []string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if rest, ok := strings.CutPrefix(l, ":"+prefix); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				out = append(out, prefix+f[0])
			}
		}
	}
	return out
}

// removalScript is the iptables-restore --noflush input that removes chains
// from table, given the table's iptables-save output: the rules of other
// chains that jump to them (deleted by their full spec, as saved), then the
// chains' own rules (flushed, since they may jump to each other), then the
// chains. It is empty when chains is.
func removalScript(table, save string, chains []string) string {
	if len(chains) == 0 {
		return ""
	}
	script := []string{"*" + table}
	for _, l := range strings.Split(save, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "-A" || slices.Contains(chains, f[1]) {
			continue
		}
		for _, jump := range []string{"-j", "-g"} {
			if j := slices.Index(f, jump); j >= 0 && j+1 < len(f) && slices.Contains(chains, f[j+1]) {
				script = append(script, "-D"+strings.TrimPrefix(l, "-A"))
				break
			}
		}
	}
	for _, chain := range chains {
		script = append(script, "-F "+chain)
	}
	for _, chain := range chains {
		script = append(script, "-X "+chain)
	}
	return strings.Join(append(script, "COMMIT", ""), "\n")
}
