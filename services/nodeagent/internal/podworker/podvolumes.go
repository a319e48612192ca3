package podworker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
)

// preparingVolumes makes every volume a directory to preopen, and puts a
// pod that declares ports on the pod network (setupNetwork); while a
// source (a config map, a secret, a token) cannot be read, the containers
// show CreateContainerConfigError and it is tried again after a back-off.
func (w *Worker) preparingVolumes(ctx context.Context) State {
	pod := w.current()
	src := &volumeSource{client: w.deps.Client, pod: pod, hostIP: w.deps.NodeIP, allowedRoots: w.deps.AllowedHostPaths, log: w.log}
	w.volumes = map[string]string{}
	var err error
	for _, v := range pod.Spec.Volumes {
		var dir string
		if dir, err = src.prepare(ctx, filepath.Join(w.deps.VolumeDir, v.Name), v); err != nil {
			err = fmt.Errorf("volume %q: %w", v.Name, err)
			break
		}
		w.volumes[v.Name] = dir
	}
	if ctx.Err() != nil {
		return StatePreparingVolumes
	}
	if err == nil {
		w.tokensAt = time.Now()
		if !w.setupNetwork(ctx) {
			return StatePreparingVolumes
		}
		if len(w.inits) > 0 {
			return StateInitializing
		}
		return StateStarting
	}
	w.log.Warn("volume setup failed", "err", err)
	w.event(v1.EventTypeWarning, "FailedMount", "MountVolume.SetUp failed: %v", err)
	for _, c := range w.all() {
		c.state = waiting("CreateContainerConfigError", err.Error())
	}
	w.publish()
	sleep(ctx, w.deps.Backoff.Delay(w.volumeAttempt))
	w.volumeAttempt++
	return StatePreparingVolumes
}

// refreshes reports whether pod has volumes the volume sync refreshes or
// checks: those of API objects, and emptyDirs with a size limit.
func refreshes(pod *v1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil ||
			(v.EmptyDir != nil && v.EmptyDir.SizeLimit != nil && !v.EmptyDir.SizeLimit.IsZero()) {
			return true
		}
	}
	return false
}

// refreshVolumes writes the files of volumes that come from API objects
// again, so that a running module sees updated config maps and secrets and
// a renewed token. A source that cannot be read leaves the files as they
// are.
func (w *Worker) refreshVolumes(ctx context.Context) {
	pod := w.current()
	// Tokens are renewed, like the kubelet's, at 80% of their default
	// hour-long life, not at every refresh.
	renew := time.Since(w.tokensAt) > 48*time.Minute
	if renew {
		w.tokensAt = time.Now()
	}
	src := &volumeSource{client: w.deps.Client, pod: pod, hostIP: w.deps.NodeIP, skipTokens: !renew, refreshing: true, log: w.log}
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap == nil && v.Secret == nil && v.DownwardAPI == nil && v.Projected == nil {
			continue
		}
		if _, err := src.prepare(ctx, filepath.Join(w.deps.VolumeDir, v.Name), v); err != nil {
			w.log.Warn("volume refresh failed", "volume", v.Name, "err", err)
		}
	}
}

// checkEmptyDirLimits evicts the pod, as the kubelet does, when an emptyDir
// holds more than its sizeLimit.
func (w *Worker) checkEmptyDirLimits() {
	pod := w.current()
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil || v.EmptyDir.SizeLimit.IsZero() {
			continue
		}
		used := dirSize(filepath.Join(w.deps.VolumeDir, v.Name))
		if used <= v.EmptyDir.SizeLimit.Value() {
			continue
		}
		msg := fmt.Sprintf("Usage of EmptyDir volume %q exceeds the limit %q.", v.Name, v.EmptyDir.SizeLimit.String())
		w.log.Warn("evicting pod", "reason", msg, "used_bytes", used)
		w.event(v1.EventTypeWarning, "Evicted", "%s", msg)
		w.mu.Lock()
		w.failReason, w.failMsg = "Evicted", msg
		w.mu.Unlock()
		w.Terminate(0)
		return
	}
}

// dirSize is the bytes of the regular files below dir.
func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}
