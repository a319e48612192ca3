package localcluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// The ClusterRoleBindings kubeadm makes so that nodes join with bootstrap
// tokens: the token's group may send node client CSRs, which
// kube-controller-manager's csrapproving controller then approves, and a
// node may renew its own.
var bootstrapBindings = []struct{ name, role, group string }{
	{"kubeadm:kubelet-bootstrap", "system:node-bootstrapper", "system:bootstrappers"},
	{"kubeadm:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", "system:bootstrappers"},
	{"kubeadm:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes"},
}

// BootstrapKubeconfig makes a bootstrap token valid for ttl (a Secret
// kube-system/bootstrap-token-<id>), makes sure kubeadm's bootstrap
// ClusterRoleBindings exist, and writes a kubeconfig holding the token to
// Dir/nodes/bootstrap-<id>.kubeconfig. The cluster must run with
// Config.BootstrapTokenAuth. It returns the kubeconfig's path and the token.
func (c *Cluster) BootstrapKubeconfig(ctx context.Context, ttl time.Duration) (path, token string, err error) {
	if !c.bootstrapTokens {
		return "", "", errors.New("bootstrap kubeconfig: the cluster was started without Config.BootstrapTokenAuth")
	}
	cs, err := c.Clientset()
	if err != nil {
		return "", "", err
	}
	for _, b := range bootstrapBindings {
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: b.name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: b.role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: b.group}},
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", "", fmt.Errorf("bootstrap kubeconfig: ClusterRoleBinding %s: %w", b.name, err)
		}
	}
	id, secret := tokenPart(6), tokenPart(16)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: "bootstrap-token-" + id},
		Type:       corev1.SecretTypeBootstrapToken,
		StringData: map[string]string{
			"token-id":                       id,
			"token-secret":                   secret,
			"usage-bootstrap-authentication": "true",
			"expiration":                     time.Now().Add(ttl).UTC().Format(time.RFC3339),
		},
	}
	if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return "", "", fmt.Errorf("bootstrap kubeconfig: token Secret: %w", err)
	}
	token = id + "." + secret
	caPEM, err := os.ReadFile(c.CACertPath())
	if err != nil {
		return "", "", fmt.Errorf("bootstrap kubeconfig: %w", err)
	}
	path = filepath.Join(c.dir, "nodes", "bootstrap-"+id+".kubeconfig")
	if err := testpki.WriteKubeconfig(path, testpki.Kubeconfig{
		Name: "wasmlet-local", Server: c.Server(), CA: caPEM, User: "tls-bootstrap-token-user", Token: token,
	}); err != nil {
		return "", "", fmt.Errorf("bootstrap kubeconfig: %w", err)
	}
	return path, token, nil
}

// tokenPart is n characters of [a-z0-9], what a bootstrap token is made of.
func tokenPart(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
