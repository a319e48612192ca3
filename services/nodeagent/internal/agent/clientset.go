package agent

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	authnv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authzv1 "k8s.io/client-go/kubernetes/typed/authorization/v1"
	certv1 "k8s.io/client-go/kubernetes/typed/certificates/v1"
	certv1beta1 "k8s.io/client-go/kubernetes/typed/certificates/v1beta1"
	coordv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	nodev1 "k8s.io/client-go/kubernetes/typed/node/v1"
	"k8s.io/client-go/rest"
)

// nodeClientset is a kubernetes.Interface with only the API groups a node
// agent uses: core/v1, coordination/v1 (Lease), authentication/v1
// (TokenReview), authorization/v1 (SubjectAccessReview),
// certificates/v1 and v1beta1 (the serving certificate's CSR; client-go's
// csr package falls back to v1beta1) and node/v1 (RuntimeClass).
//
// client-go's full Clientset links a typed client, its apply
// configurations and the discovery client (with gnostic's OpenAPI models)
// for every group: about 5 MB of the node agent's binary (issue 7). Every
// other method of kubernetes.Interface is the nil embedded interface's and
// panics: a node agent package that needs another group adds it here
// (TestNodeClientsetCoversUses fails until it does).
type nodeClientset struct {
	kubernetes.Interface // nil: see above

	core   *corev1.CoreV1Client
	coord  *coordv1.CoordinationV1Client
	authn  *authnv1.AuthenticationV1Client
	authz  *authzv1.AuthorizationV1Client
	cert   *certv1.CertificatesV1Client
	certb1 *certv1beta1.CertificatesV1beta1Client
	node   *nodev1.NodeV1Client
}

func (c *nodeClientset) CoreV1() corev1.CoreV1Interface                      { return c.core }
func (c *nodeClientset) CoordinationV1() coordv1.CoordinationV1Interface     { return c.coord }
func (c *nodeClientset) AuthenticationV1() authnv1.AuthenticationV1Interface { return c.authn }
func (c *nodeClientset) AuthorizationV1() authzv1.AuthorizationV1Interface   { return c.authz }
func (c *nodeClientset) CertificatesV1() certv1.CertificatesV1Interface      { return c.cert }
func (c *nodeClientset) CertificatesV1beta1() certv1beta1.CertificatesV1beta1Interface {
	return c.certb1
}
func (c *nodeClientset) NodeV1() nodev1.NodeV1Interface { return c.node }

// newNodeClientset makes the typed clients of nodeClientset, sharing one
// HTTP client (as kubernetes.NewForConfig does).
func newNodeClientset(cfg *rest.Config) (*nodeClientset, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("API server client: %w", err)
	}
	var c nodeClientset
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var e error
	c.core, e = corev1.NewForConfigAndClient(cfg, hc)
	add(e)
	c.coord, e = coordv1.NewForConfigAndClient(cfg, hc)
	add(e)
	c.authn, e = authnv1.NewForConfigAndClient(cfg, hc)
	add(e)
	c.authz, e = authzv1.NewForConfigAndClient(cfg, hc)
	add(e)
	c.cert, e = certv1.NewForConfigAndClient(cfg, hc)
	add(e)
	c.certb1, e = certv1beta1.NewForConfigAndClient(cfg, hc)
	add(e)
	c.node, e = nodev1.NewForConfigAndClient(cfg, hc)
	add(e)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("API server client: %w", err)
	}
	return &c, nil
}
