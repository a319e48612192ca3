package podworker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wasmlet/wasmlet/internal/beneath"
)

// volumeSource makes one pod volume as a directory on the host that the
// executor preopens for the module. Files of configMap, secret, downwardAPI
// and projected volumes are written once, at pod start; the node agent
// does not yet refresh them when their source changes.
type volumeSource struct {
	client       kubernetes.Interface
	pod          *v1.Pod
	hostIP       string
	allowedRoots []string
	// skipTokens leaves projected service-account tokens as they are (a
	// refresh that is not yet due to renew them).
	skipTokens bool
	// refreshing: files are written again into volumes made before.
	refreshing bool
	log        *slog.Logger
}

// errVolume is a volume the pod asks for that the node cannot provide; its
// message says why and what to do.
var errVolume = errors.New("volume")

// prepare returns the host directory of volume v, creating it under dir.
func (s *volumeSource) prepare(ctx context.Context, dir string, v v1.Volume) (string, error) {
	switch {
	case v.EmptyDir != nil:
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return "", err
		}
		if _, ok := sharedGroup(dir); ok {
			// The module writes it through the executor, whose group
			// this is.
			return dir, os.Chmod(dir, 0o770|os.ModeSetgid)
		}
		return dir, nil
	case v.HostPath != nil:
		return s.hostPath(v.HostPath.Path)
	case v.ConfigMap != nil:
		files, err := s.configMapFiles(ctx, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		if err != nil {
			return "", err
		}
		return dir, writeFiles(dir, files, mode(v.ConfigMap.DefaultMode))
	case v.Secret != nil:
		files, err := s.secretFiles(ctx, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		if err != nil {
			return "", err
		}
		if err := s.memoryBacked(dir); err != nil {
			return "", err
		}
		if err := shareMount(dir); err != nil {
			return "", err
		}
		return dir, writeFiles(dir, files, mode(v.Secret.DefaultMode))
	case v.DownwardAPI != nil:
		files, err := s.downwardFiles(v.DownwardAPI.Items)
		if err != nil {
			return "", err
		}
		return dir, writeFiles(dir, files, mode(v.DownwardAPI.DefaultMode))
	case v.Projected != nil:
		files := map[string]file{}
		for _, src := range v.Projected.Sources {
			var part map[string]file
			var err error
			switch {
			case src.ConfigMap != nil:
				part, err = s.configMapFiles(ctx, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
			case src.Secret != nil:
				part, err = s.secretFiles(ctx, src.Secret.Name, src.Secret.Items, src.Secret.Optional)
			case src.DownwardAPI != nil:
				part, err = s.downwardFiles(src.DownwardAPI.Items)
			case src.ServiceAccountToken != nil && s.skipTokens:
				continue
			case src.ServiceAccountToken != nil:
				part, err = s.token(ctx, src.ServiceAccountToken)
			default:
				err = fmt.Errorf("%w %q: this projected source is not supported on wasmlet nodes", errVolume, v.Name)
			}
			if err != nil {
				return "", err
			}
			for k, b := range part {
				files[k] = b
			}
		}
		// Projected volumes carry tokens and secrets: memory only.
		if err := s.memoryBacked(dir); err != nil {
			return "", err
		}
		if err := shareMount(dir); err != nil {
			return "", err
		}
		return dir, writeFiles(dir, files, mode(v.Projected.DefaultMode))
	}
	return "", fmt.Errorf("%w %q: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported on wasmlet nodes", errVolume, v.Name)
}

func mode(m *int32) os.FileMode {
	if m == nil {
		return 0o644
	}
	return os.FileMode(*m) & 0o777
}

// hostPath allows only paths under the configured roots, after resolving
// symlinks, so that neither ".." nor a link can reach the rest of the host.
func (s *volumeSource) hostPath(p string) (string, error) {
	if len(s.allowedRoots) == 0 {
		return "", fmt.Errorf("%w: hostPath %q is refused: this node allows no hostPath volumes (start the node agent with --allowed-host-path)", errVolume, p)
	}
	real, err := filepath.EvalSymlinks(filepath.Clean(p))
	if err != nil {
		return "", fmt.Errorf("%w: hostPath %q: %v", errVolume, p, err)
	}
	for _, root := range s.allowedRoots {
		r, err := filepath.EvalSymlinks(root)
		if err != nil {
			continue
		}
		if real == r || strings.HasPrefix(real, r+string(filepath.Separator)) {
			return real, nil
		}
	}
	return "", fmt.Errorf("%w: hostPath %q (%s) is outside the allowed roots %v", errVolume, p, real, s.allowedRoots)
}

func (s *volumeSource) configMapFiles(ctx context.Context, name string, items []v1.KeyToPath, optional *bool) (map[string]file, error) {
	cm, err := s.client.CoreV1().ConfigMaps(s.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("configmap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return pick(data, items, "configmap "+name)
}

func (s *volumeSource) secretFiles(ctx context.Context, name string, items []v1.KeyToPath, optional *bool) (map[string]file, error) {
	sec, err := s.client.CoreV1().Secrets(s.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return pick(sec.Data, items, "secret "+name)
}

// file is one file of a volume: its bytes, and the item's own mode (nil:
// the volume's default mode).
type file struct {
	data []byte
	mode *int32
}

// pick applies a volume's items: all keys by their names, or only the
// listed keys at their paths, with their modes.
func pick(data map[string][]byte, items []v1.KeyToPath, what string) (map[string]file, error) {
	out := map[string]file{}
	if len(items) == 0 {
		for k, b := range data {
			out[k] = file{data: b}
		}
		return out, nil
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = file{data: b, mode: it.Mode}
	}
	return out, nil
}

func (s *volumeSource) downwardFiles(items []v1.DownwardAPIVolumeFile) (map[string]file, error) {
	out := map[string]file{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("%w: downwardAPI %q: only fieldRef items are supported", errVolume, it.Path)
		}
		v, err := fieldRef(s.pod, it.FieldRef.FieldPath, s.hostIP)
		if err != nil {
			return nil, err
		}
		out[it.Path] = file{data: []byte(v), mode: it.Mode}
	}
	return out, nil
}

// token asks the TokenRequest API for a token of the pod's service account,
// bound to the pod, as the kubelet does for a projected token volume.
func (s *volumeSource) token(ctx context.Context, src *v1.ServiceAccountTokenProjection) (map[string]file, error) {
	sa := s.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: s.pod.Name, UID: s.pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := s.client.CoreV1().ServiceAccounts(s.pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("service account token for %q: %w", sa, err)
	}
	return map[string]file{src.Path: {data: []byte(tr.Status.Token)}}, nil
}

// readOnlyVolume reports whether the pod's volume name is one the kubelet
// mounts read-only whatever the mount asks: its files come from API
// objects and are rewritten by the node agent.
func readOnlyVolume(pod *v1.Pod, name string) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Name == name {
			return v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil
		}
	}
	return false
}

// writeFiles writes files under dir, each with its own mode or m,
// refusing paths that leave it and following no symlink inside it.
func writeFiles(dir string, files map[string]file, m os.FileMode) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	_, shared := sharedGroup(dir)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		clean := filepath.Clean(n)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("%w: file path %q leaves the volume", errVolume, n)
		}
		fm := m
		if files[n].mode != nil {
			fm = mode(files[n].mode)
		}
		if shared {
			fm |= 0o040 // the executor's group reads what it preopens
		}
		if err := beneath.WriteFile(dir, clean, files[n].data, fm); err != nil {
			return fmt.Errorf("%w: file %q: %v", errVolume, n, err)
		}
	}
	return nil
}

// A pod's volumes are shared with an unprivileged executor through a
// group, as the kubelet shares them with a pod's fsGroup: the node agent
// makes the pods' directory setgid and of the executor's group (package
// agent), so that what it makes below takes that group; an emptyDir is
// then group-writable (02770), files of the other volumes group-readable,
// and nothing is world-writable. Without it (an executor that runs as the
// node agent's user) modes are as they were.

// sharedGroup reports the group that dir is shared with: its own, when it
// is setgid and not the node agent's.
func sharedGroup(dir string) (int, bool) {
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&unix.S_ISGID == 0 || int(st.Gid) == os.Getegid() {
		return 0, false
	}
	return int(st.Gid), true
}

// shareMount gives the root of the tmpfs mounted on dir the group of the
// directory it is mounted in, when that is shared: the mount hides the
// group and setgid bit dir had.
func shareMount(dir string) error {
	gid, ok := sharedGroup(filepath.Dir(dir))
	if !ok {
		return nil
	}
	if err := os.Lchown(dir, -1, gid); err != nil {
		return err
	}
	return os.Chmod(dir, 0o750|os.ModeSetgid)
}

// shareSubPath makes the directories the node agent made for subPath rel
// in a group-writable volume at dir (an emptyDir) group-writable too, so
// that the module can write below a subPath mount as it can below the
// volume's. Each is opened beneath dir without following a link.
func shareSubPath(dir, rel string) error {
	if _, ok := sharedGroup(dir); !ok {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || st.Mode&0o020 == 0 {
		return err
	}
	comps := strings.Split(filepath.Clean(rel), string(filepath.Separator))
	for i := range comps {
		f, err := beneath.OpenDir(dir, filepath.Join(comps[:i+1]...))
		if err != nil {
			return err
		}
		if err = unix.Fstat(int(f.Fd()), &st); err == nil && int(st.Uid) == os.Geteuid() && st.Mode&0o070 != 0o070 {
			err = f.Chmod(0o770 | os.ModeSetgid)
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
