package kubernetes_test

// Builds the kustomizations in this directory the way `kubectl apply -k`
// would, decodes every resource strictly into its API type (a misspelled or
// misplaced field fails), and checks that the manifests fit the gateway:
// probes, security context, shutdown timing, selectors, network policy ports,
// the operator rules file and the GATEWAY_* variables the README documents.

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/config"
)

const (
	appName      = "defender-gateway"
	appLabel     = "app.kubernetes.io/name"
	rulesKey     = "rules.yaml"
	nonRootID    = int64(65532)
	minReplicas  = 2
	overlayNS    = "defender-gateway"
	overlayImage = "registry.example.com/defender-gateway:1.0.0"
)

// serviceMonitor mirrors the fields of monitoring.coreos.com/v1 ServiceMonitor
// that the manifests use; anything else is an unknown field and fails.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			MatchNames []string `json:"matchNames,omitempty"`
			Any        bool     `json:"any,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// built is the decoded output of one kustomization.
type built struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	serviceAccounts []*corev1.ServiceAccount
	namespaces      []*corev1.Namespace
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
	monitors        []*serviceMonitor
	metas           []metav1.Object // every resource, for label and namespace checks
	kinds           []string
}

// newObject returns the typed object for apiVersion/kind, or nil.
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "v1 Service":
		return &corev1.Service{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1 Namespace":
		return &corev1.Namespace{}
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &serviceMonitor{}
	}
	return nil
}

// decodeStrict decodes one YAML document into obj. sigs.k8s.io/yaml's
// UnmarshalStrict rejects duplicate keys and unknown fields, but encoding/json
// matches field names case-insensitively ("Replicas" would pass), so the
// document is also converted with apimachinery's converter, which matches the
// json names exactly and reports unknown fields.
func decodeStrict(data []byte, obj any) error {
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		return err
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := utiljson.Unmarshal(j, &m); err != nil {
		return err
	}
	fresh := newObjectLike(obj)
	return runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(m, fresh, true)
}

func newObjectLike(obj any) any {
	switch obj.(type) {
	case *appsv1.Deployment:
		return &appsv1.Deployment{}
	case *corev1.Service:
		return &corev1.Service{}
	case *corev1.ConfigMap:
		return &corev1.ConfigMap{}
	case *corev1.ServiceAccount:
		return &corev1.ServiceAccount{}
	case *corev1.Namespace:
		return &corev1.Namespace{}
	case *autoscalingv2.HorizontalPodAutoscaler:
		return &autoscalingv2.HorizontalPodAutoscaler{}
	case *policyv1.PodDisruptionBudget:
		return &policyv1.PodDisruptionBudget{}
	case *networkingv1.NetworkPolicy:
		return &networkingv1.NetworkPolicy{}
	case *serviceMonitor:
		return &serviceMonitor{}
	}
	panic(fmt.Sprintf("no fresh object for %T", obj))
}

func build(t *testing.T, dir string) *built {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	b := &built{configMaps: map[string]*corev1.ConfigMap{}}
	for _, r := range rm.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		id := fmt.Sprintf("%s %s/%s", r.GetApiVersion(), r.GetKind(), r.GetName())
		obj := newObject(r.GetApiVersion(), r.GetKind())
		if obj == nil {
			t.Errorf("%s: unexpected kind (the test knows no type for it)", id)
			continue
		}
		if err := decodeStrict(data, obj); err != nil {
			t.Errorf("%s: strict decode: %v\n%s", id, err, data)
			continue
		}
		b.kinds = append(b.kinds, r.GetKind())
		b.metas = append(b.metas, obj.(metav1.Object))
		switch o := obj.(type) {
		case *appsv1.Deployment:
			b.deployments = append(b.deployments, o)
		case *corev1.Service:
			b.services = append(b.services, o)
		case *corev1.ConfigMap:
			b.configMaps[o.Name] = o
		case *corev1.ServiceAccount:
			b.serviceAccounts = append(b.serviceAccounts, o)
		case *corev1.Namespace:
			b.namespaces = append(b.namespaces, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			b.hpas = append(b.hpas, o)
		case *policyv1.PodDisruptionBudget:
			b.pdbs = append(b.pdbs, o)
		case *networkingv1.NetworkPolicy:
			b.netpols = append(b.netpols, o)
		case *serviceMonitor:
			b.monitors = append(b.monitors, o)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return b
}

// TestStrictDecodeRejectsTypos makes sure the decoder used below would catch
// misspelled fields, including case-only differences and duplicate keys.
func TestStrictDecodeRejectsTypos(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 3}\n",
		"wrong case":      "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {Replicas: 3}\n",
		"duplicate key":   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 3, replicas: 2}\n",
		"nested typo":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: c, readinessProbe: {httpGet: {paht: /readyz}}}]}}}\n",
		"servicemonitor":  "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec: {endpoints: [{port: metrics, intervall: 30s}]}\n",
		"misplaced field": "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1}]}\nports: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatal(err)
			}
			if err := decodeStrict([]byte(doc), newObject(tm.APIVersion, tm.Kind)); err == nil {
				t.Errorf("decoded without error:\n%s", doc)
			}
		})
	}
}

func TestBase(t *testing.T) {
	b := build(t, "base")
	checkCommon(t, b)
	t.Run("namespace-agnostic", func(t *testing.T) {
		for _, m := range b.metas {
			if m.GetNamespace() != "" {
				t.Errorf("%s has namespace %q", m.GetName(), m.GetNamespace())
			}
		}
		if len(b.namespaces) != 0 {
			t.Errorf("base contains a Namespace")
		}
	})
	t.Run("service is ClusterIP", func(t *testing.T) {
		if tp := b.services[0].Spec.Type; tp != "" && tp != corev1.ServiceTypeClusterIP {
			t.Errorf("type = %s", tp)
		}
	})
}

func TestExampleOverlay(t *testing.T) {
	b := build(t, filepath.Join("overlays", "example"))
	checkCommon(t, b)
	t.Run("namespace", func(t *testing.T) {
		if len(b.namespaces) != 1 || b.namespaces[0].Name != overlayNS {
			t.Fatalf("want one Namespace %s, got %d", overlayNS, len(b.namespaces))
		}
		for _, m := range b.metas {
			if _, isNS := m.(*corev1.Namespace); !isNS && m.GetNamespace() != overlayNS {
				t.Errorf("%s: namespace %q, want %q", m.GetName(), m.GetNamespace(), overlayNS)
			}
		}
	})
	t.Run("image", func(t *testing.T) {
		if img := gatewayContainer(t, b.deployments[0]).Image; img != overlayImage {
			t.Errorf("image = %q, want %q", img, overlayImage)
		}
	})
	t.Run("geography", func(t *testing.T) {
		if g := resolvedEnv(t, b)["GATEWAY_GEOGRAPHIES"]; g != "EU" {
			t.Errorf("GATEWAY_GEOGRAPHIES = %q, want EU", g)
		}
	})
	t.Run("load balancer keeps client addresses", func(t *testing.T) {
		s := b.services[0]
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			t.Errorf("type = %s", s.Spec.Type)
		}
		if s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("externalTrafficPolicy = %q, want Local", s.Spec.ExternalTrafficPolicy)
		}
	})
	t.Run("operator rule present", func(t *testing.T) {
		rs, err := allowlist.ParseRules([]byte(b.configMaps["defender-gateway-rules"].Data[rulesKey]), rulesKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs.Rules) == 0 {
			t.Error("the example overlay should carry an example operator rule")
		}
	})
}

func TestProxyProtocolOverlay(t *testing.T) {
	b := build(t, filepath.Join("overlays", "proxy-protocol"))
	checkCommon(t, b)
	env := resolvedEnv(t, b)
	t.Run("the gateway requires the header, from the balancer only", func(t *testing.T) {
		if got := env["GATEWAY_PROXY_PROTOCOL"]; got != "required" {
			t.Errorf("GATEWAY_PROXY_PROTOCOL = %q, want required", got)
		}
		from := env["GATEWAY_PROXY_PROTOCOL_FROM"]
		if from == "" {
			t.Fatal("GATEWAY_PROXY_PROTOCOL_FROM is empty: the gateway would not start")
		}
		for _, p := range strings.Split(from, ",") {
			if _, err := netip.ParsePrefix(strings.TrimSpace(p)); err != nil {
				t.Errorf("GATEWAY_PROXY_PROTOCOL_FROM: %v", err)
			}
		}
	})
	t.Run("the load balancer sends it", func(t *testing.T) {
		s := b.services[0]
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			t.Errorf("type = %s, want LoadBalancer", s.Spec.Type)
		}
		if got := s.Annotations["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"]; !strings.Contains(got, "proxy_protocol_v2.enabled=true") {
			t.Errorf("target group attributes %q do not turn PROXY protocol v2 on", got)
		}
	})
	t.Run("the network policy admits the balancer on the proxy port", func(t *testing.T) {
		// The pods see the balancer's addresses, not the clients': a
		// NetworkPolicy admitting only client networks that do not cover
		// GATEWAY_PROXY_PROTOCOL_FROM would drop every connection.
		var admitted []netip.Prefix
		for _, np := range b.netpols {
			for _, rule := range np.Spec.Ingress {
				if !slices.ContainsFunc(rule.Ports, func(p networkingv1.NetworkPolicyPort) bool {
					return p.Port != nil && p.Port.IntValue() == 3128
				}) {
					continue
				}
				for _, peer := range rule.From {
					if peer.IPBlock != nil && len(peer.IPBlock.Except) == 0 {
						if p, err := netip.ParsePrefix(peer.IPBlock.CIDR); err == nil {
							admitted = append(admitted, p)
						}
					}
				}
			}
		}
		for _, f := range strings.Split(env["GATEWAY_PROXY_PROTOCOL_FROM"], ",") {
			from, err := netip.ParsePrefix(strings.TrimSpace(f))
			if err != nil {
				continue // reported above
			}
			if !slices.ContainsFunc(admitted, func(p netip.Prefix) bool { return p.Bits() <= from.Bits() && p.Contains(from.Addr()) }) {
				t.Errorf("GATEWAY_PROXY_PROTOCOL_FROM %s is not admitted to port 3128 by the NetworkPolicy (%v)", from, admitted)
			}
		}
	})
	t.Run("the settings load", func(t *testing.T) {
		if _, _, err := config.Load(env); err != nil {
			t.Errorf("the overlay's settings do not start a gateway: %v", err)
		}
	})
}

// checkCommon holds the checks every build must pass.
func checkCommon(t *testing.T, b *built) {
	t.Helper()
	counts := map[string]int{}
	for _, k := range b.kinds {
		counts[k]++
	}
	for kind, n := range map[string]int{"Deployment": 1, "Service": 1, "ConfigMap": 2, "ServiceAccount": 1,
		"HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1, "ServiceMonitor": 1} {
		if counts[kind] != n {
			t.Fatalf("%d %s, want %d", counts[kind], kind, n)
		}
	}
	d, svc, hpa, pdb, np, sm := b.deployments[0], b.services[0], b.hpas[0], b.pdbs[0], b.netpols[0], b.monitors[0]
	c := gatewayContainer(t, d)
	pod := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)
	env := resolvedEnv(t, b)

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"app label on every resource", func(t *testing.T) {
			for _, m := range b.metas {
				if m.GetLabels()[appLabel] != appName {
					t.Errorf("%s: label %s = %q", m.GetName(), appLabel, m.GetLabels()[appLabel])
				}
			}
		}},
		{"replicas", func(t *testing.T) {
			if d.Spec.Replicas == nil || *d.Spec.Replicas < minReplicas {
				t.Errorf("replicas = %v, want >= %d", d.Spec.Replicas, minReplicas)
			}
		}},
		{"deployment selector matches pod labels", func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(podLabels) {
				t.Errorf("selector %v does not match pod labels %v (%v)", d.Spec.Selector, podLabels, err)
			}
		}},
		{"ports and listen addresses", func(t *testing.T) {
			for name, v := range map[string]string{"proxy": "GATEWAY_LISTEN", "admin": "GATEWAY_ADMIN_LISTEN"} {
				p := containerPort(c, name)
				if p == 0 {
					t.Errorf("no container port named %s", name)
					continue
				}
				host, port, err := net.SplitHostPort(env[v])
				if err != nil || port != strconv.Itoa(int(p)) || (host != "0.0.0.0" && host != "" && host != "::") {
					t.Errorf("%s = %q: must listen on all addresses at port %d", v, env[v], p)
				}
			}
		}},
		{"probes", func(t *testing.T) {
			for _, p := range []struct {
				name  string
				probe *corev1.Probe
				path  string
			}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
				if p.probe == nil || p.probe.HTTPGet == nil {
					t.Errorf("%s probe: want httpGet", p.name)
					continue
				}
				g := p.probe.HTTPGet
				if g.Path != p.path || g.Port != intstr.FromString("admin") {
					t.Errorf("%s probe: %s on %s, want %s on named port admin", p.name, g.Path, g.Port.String(), p.path)
				}
			}
			if c.ReadinessProbe != nil && c.ReadinessProbe.PeriodSeconds != 5 {
				t.Errorf("readiness period = %ds, want 5s", c.ReadinessProbe.PeriodSeconds)
			}
			if sp := c.StartupProbe; sp != nil && (sp.HTTPGet == nil || sp.HTTPGet.Port != intstr.FromString("admin")) {
				t.Errorf("startup probe must use httpGet on the admin port")
			}
		}},
		{"security context", func(t *testing.T) {
			sc, psc := c.SecurityContext, pod.SecurityContext
			if sc == nil {
				t.Fatal("container has no securityContext")
			}
			if psc == nil {
				psc = &corev1.PodSecurityContext{}
			}
			if !orBool(sc.RunAsNonRoot, psc.RunAsNonRoot) {
				t.Error("runAsNonRoot not set")
			}
			if u := orInt(sc.RunAsUser, psc.RunAsUser); u != nonRootID {
				t.Errorf("runAsUser = %d", u)
			}
			if g := orInt(sc.RunAsGroup, psc.RunAsGroup); g != nonRootID {
				t.Errorf("runAsGroup = %d", g)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Error("readOnlyRootFilesystem not true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Error("allowPrivilegeEscalation not false")
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Error("privileged")
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
				t.Errorf("capabilities = %+v, want drop [ALL] and no add", sc.Capabilities)
			}
			sp := sc.SeccompProfile
			if sp == nil {
				sp = psc.SeccompProfile
			}
			if sp == nil || sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("seccompProfile = %+v, want RuntimeDefault", sp)
			}
		}},
		{"service account", func(t *testing.T) {
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("automountServiceAccountToken not false")
			}
			if sa := b.serviceAccounts[0].Name; pod.ServiceAccountName != sa {
				t.Errorf("serviceAccountName = %q, want the dedicated %q", pod.ServiceAccountName, sa)
			}
		}},
		{"resources", func(t *testing.T) {
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okReq := c.Resources.Requests[r]
				lim, okLim := c.Resources.Limits[r]
				if !okReq || !okLim || req.IsZero() || lim.IsZero() {
					t.Errorf("%s: request and limit must both be set", r)
				} else if req.Cmp(lim) > 0 {
					t.Errorf("%s: request %s above limit %s", r, req.String(), lim.String())
				}
			}
		}},
		{"termination grace covers shutdown delay and grace", func(t *testing.T) {
			delay := parseDuration(t, env, "GATEWAY_SHUTDOWN_DELAY", 0)
			grace := parseDuration(t, env, "GATEWAY_SHUTDOWN_GRACE", 30*time.Second)
			tgp := time.Duration(30) * time.Second
			if pod.TerminationGracePeriodSeconds != nil {
				tgp = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
			}
			if tgp <= delay+grace {
				t.Errorf("terminationGracePeriodSeconds %s <= GATEWAY_SHUTDOWN_DELAY %s + GATEWAY_SHUTDOWN_GRACE %s", tgp, delay, grace)
			}
			if delay == 0 {
				t.Error("GATEWAY_SHUTDOWN_DELAY should be > 0 so endpoints are removed before the listener closes")
			}
		}},
		{"configmap references exist", func(t *testing.T) {
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && b.configMaps[ef.ConfigMapRef.Name] == nil {
					t.Errorf("envFrom references missing ConfigMap %s", ef.ConfigMapRef.Name)
				}
			}
			for _, v := range pod.Volumes {
				if v.ConfigMap != nil && b.configMaps[v.ConfigMap.Name] == nil {
					t.Errorf("volume %s references missing ConfigMap %s", v.Name, v.ConfigMap.Name)
				}
			}
		}},
		{"rules file mounted from the rules ConfigMap", func(t *testing.T) {
			rulesFile := env["GATEWAY_RULES_FILE"]
			if rulesFile == "" {
				t.Fatal("GATEWAY_RULES_FILE not set")
			}
			dir, file := path.Split(rulesFile)
			var mount *corev1.VolumeMount
			for i, m := range c.VolumeMounts {
				if path.Clean(m.MountPath) == path.Clean(dir) {
					mount = &c.VolumeMounts[i]
				}
			}
			if mount == nil {
				t.Fatalf("nothing mounted at %s", dir)
			}
			if mount.SubPath != "" || mount.SubPathExpr != "" {
				t.Error("subPath mounts never see ConfigMap updates; mount the directory")
			}
			if !mount.ReadOnly {
				t.Error("rules mount not read-only")
			}
			for _, v := range pod.Volumes {
				if v.Name != mount.Name {
					continue
				}
				if v.ConfigMap == nil {
					t.Fatalf("volume %s is not a ConfigMap", v.Name)
				}
				cm := b.configMaps[v.ConfigMap.Name]
				if cm == nil {
					t.Fatalf("ConfigMap %s not in the build", v.ConfigMap.Name)
				}
				if _, ok := cm.Data[file]; !ok {
					t.Errorf("ConfigMap %s has no key %s", cm.Name, file)
				}
				return
			}
			t.Errorf("no volume named %s", mount.Name)
		}},
		{"rules.yaml is valid for the gateway", func(t *testing.T) {
			cm := b.configMaps["defender-gateway-rules"]
			if cm == nil {
				t.Fatal("no ConfigMap defender-gateway-rules")
			}
			if _, err := allowlist.ParseRules([]byte(cm.Data[rulesKey]), rulesKey); err != nil {
				t.Error(err)
			}
		}},
		{"GATEWAY_* variables are known to the gateway", func(t *testing.T) {
			known := readmeVariables(t)
			names := map[string]bool{}
			for _, e := range c.Env {
				names[e.Name] = true
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && b.configMaps[ef.ConfigMapRef.Name] != nil {
					for k := range b.configMaps[ef.ConfigMapRef.Name].Data {
						names[ef.Prefix+k] = true
					}
				}
			}
			for n := range names {
				if strings.HasPrefix(n, "GATEWAY_") && !known[n] {
					t.Errorf("%s is not in the README's settings table", n)
				}
			}
		}},
		{"environment values", func(t *testing.T) {
			if g := env["GATEWAY_GEOGRAPHIES"]; g != "" {
				for _, s := range strings.Split(g, ",") {
					if _, err := allowlist.ParseDataLocation(s); err != nil {
						t.Error(err)
					}
				}
			}
			for _, cidr := range splitList(env["GATEWAY_CLIENT_CIDRS"]) {
				if _, _, err := net.ParseCIDR(cidr); err != nil {
					t.Errorf("GATEWAY_CLIENT_CIDRS: %v", err)
				}
			}
			if v := env["GATEWAY_BLOB_SCOPE"]; v != "" {
				if _, err := allowlist.ParseBlobScope(v); err != nil {
					t.Error(err)
				}
			}
			for _, n := range []string{"GATEWAY_RELOAD_INTERVAL", "GATEWAY_DNS_PROBE_INTERVAL"} {
				parseDuration(t, env, n, 0)
			}
		}},
		{"service", func(t *testing.T) {
			if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
				t.Errorf("selector %v does not match pod labels %v", svc.Spec.Selector, podLabels)
			}
			if svc.Spec.SessionAffinity != corev1.ServiceAffinityNone {
				t.Errorf("sessionAffinity = %q, want None", svc.Spec.SessionAffinity)
			}
			for name, want := range map[string]struct {
				port      int32
				container string
			}{"proxy": {3128, "proxy"}, "metrics": {3138, "admin"}} {
				p := servicePort(svc, name)
				if p == nil {
					t.Errorf("no service port named %s", name)
					continue
				}
				target := p.TargetPort
				if target.Type == intstr.String {
					target = intstr.FromInt32(containerPort(c, target.StrVal))
				} else if target.IntValue() == 0 {
					target = intstr.FromInt32(p.Port)
				}
				if p.Port != want.port || target.IntVal != containerPort(c, want.container) || p.Protocol != corev1.ProtocolTCP {
					t.Errorf("service port %s: %d -> %s, want %d -> container port %s", name, p.Port, p.TargetPort.String(), want.port, want.container)
				}
			}
		}},
		{"pod disruption budget", func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(podLabels) {
				t.Errorf("selector %v does not match pod labels", pdb.Spec.Selector)
			}
			if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.Type != intstr.Int {
				t.Fatal("minAvailable must be a number")
			}
			ma := pdb.Spec.MinAvailable.IntVal
			if ma < 1 || ma >= *d.Spec.Replicas || (hpa.Spec.MinReplicas != nil && ma >= *hpa.Spec.MinReplicas) {
				t.Errorf("minAvailable %d must be >= 1 and below the replica count, or nodes can never be drained", ma)
			}
		}},
		{"horizontal pod autoscaler", func(t *testing.T) {
			ref := hpa.Spec.ScaleTargetRef
			if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
				t.Errorf("scaleTargetRef = %+v, want apps/v1 Deployment %s", ref, d.Name)
			}
			if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < minReplicas || *hpa.Spec.MinReplicas > hpa.Spec.MaxReplicas {
				t.Errorf("minReplicas %v / maxReplicas %d", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
			}
			var cpu bool
			for _, m := range hpa.Spec.Metrics {
				if m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU &&
					m.Resource.Target.Type == autoscalingv2.UtilizationMetricType && m.Resource.Target.AverageUtilization != nil {
					cpu = true
				}
			}
			if !cpu {
				t.Error("no CPU utilisation metric")
			}
			if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
				t.Error("CPU utilisation needs a CPU request")
			}
		}},
		{"service monitor", func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
				t.Errorf("selector %v does not match the Service's labels %v", sm.Spec.Selector, svc.Labels)
			}
			if len(sm.Spec.Endpoints) != 1 {
				t.Fatalf("%d endpoints, want 1", len(sm.Spec.Endpoints))
			}
			ep := sm.Spec.Endpoints[0]
			if servicePort(svc, ep.Port) == nil || ep.Port != "metrics" {
				t.Errorf("endpoint port %q is not the Service's metrics port", ep.Port)
			}
			if ep.Path != "/metrics" {
				t.Errorf("path = %q", ep.Path)
			}
			if iv, err := time.ParseDuration(ep.Interval); err != nil || iv <= 0 {
				t.Errorf("interval %q: %v", ep.Interval, err)
			}
		}},
		{"network policy", func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil || sel.Empty() || !sel.Matches(podLabels) {
				t.Errorf("podSelector %v does not match pod labels", np.Spec.PodSelector)
			}
			if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) ||
				!slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
				t.Errorf("policyTypes = %v, want Ingress and Egress", np.Spec.PolicyTypes)
			}
			var egress []string
			for _, r := range np.Spec.Egress {
				if len(r.Ports) == 0 {
					t.Error("egress rule without ports opens every port")
				}
				for _, p := range r.Ports {
					egress = append(egress, portString(p))
				}
			}
			slices.Sort(egress)
			if want := []string{"443/TCP", "53/TCP", "53/UDP", "80/TCP"}; !slices.Equal(egress, want) {
				t.Errorf("egress ports = %v, want %v", egress, want)
			}
			ingress := map[string]networkingv1.NetworkPolicyIngressRule{}
			for _, r := range np.Spec.Ingress {
				if len(r.From) == 0 || len(r.Ports) == 0 {
					t.Error("ingress rule without sources or ports admits everyone")
				}
				for _, p := range r.Ports {
					ingress[portString(p)] = r
				}
			}
			if r, ok := ingress["3128/TCP"]; !ok || r.From[0].IPBlock == nil {
				t.Error("no ingress to 3128/TCP from client ipBlocks")
			}
			r, ok := ingress["3138/TCP"]
			if !ok || r.From[0].NamespaceSelector == nil ||
				r.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" {
				t.Error("no ingress to 3138/TCP from the monitoring namespace")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.check)
	}
}

func gatewayContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	cs := d.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%d containers, want 1", len(cs))
	}
	if len(cs[0].Args) != 0 || len(cs[0].Command) != 0 {
		t.Errorf("command/args set; the image's entrypoint is /gateway serve")
	}
	return &cs[0]
}

// resolvedEnv is the container's environment as the kubelet builds it:
// envFrom first, then env (which wins).
func resolvedEnv(t *testing.T, b *built) map[string]string {
	t.Helper()
	c := gatewayContainer(t, b.deployments[0])
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		if cm := b.configMaps[ef.ConfigMapRef.Name]; cm != nil {
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil && b.configMaps[r.Name] != nil {
				env[e.Name] = b.configMaps[r.Name].Data[r.Key]
			}
			continue
		}
		env[e.Name] = e.Value
	}
	return env
}

// readmeVariables returns the GATEWAY_* names of the README's settings
// table; a row may name two variables ("`A` / `B`").
func readmeVariables(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	known := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "| `GATEWAY_") {
			continue
		}
		cell := strings.SplitN(strings.TrimPrefix(line, "|"), "|", 2)[0]
		for _, v := range strings.Split(cell, " / ") {
			known[strings.Trim(strings.TrimSpace(v), "`")] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(known) < 10 || !known["GATEWAY_DNS_MAX_TTL"] {
		t.Fatalf("README settings table not found or not parsed (%d variables)", len(known))
	}
	return known
}

func parseDuration(t *testing.T, env map[string]string, name string, def time.Duration) time.Duration {
	t.Helper()
	v, ok := env[name]
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	return d
}

func containerPort(c *corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func servicePort(s *corev1.Service, name string) *corev1.ServicePort {
	for i := range s.Spec.Ports {
		if s.Spec.Ports[i].Name == name {
			return &s.Spec.Ports[i]
		}
	}
	return nil
}

func portString(p networkingv1.NetworkPolicyPort) string {
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	port := "any"
	if p.Port != nil {
		port = p.Port.String()
	}
	if p.EndPort != nil {
		port += "-" + strconv.Itoa(int(*p.EndPort))
	}
	return port + "/" + string(proto)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func orBool(a, b *bool) bool {
	if a != nil {
		return *a
	}
	return b != nil && *b
}

func orInt(a, b *int64) int64 {
	if a != nil {
		return *a
	}
	if b != nil {
		return *b
	}
	return -1
}
