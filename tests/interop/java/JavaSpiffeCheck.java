// java-spiffe-core against a Workload API agent: X509Source (SVID, bundle, chain verification,
// a rotation), JWTSource and the client's JWT fetch with several audiences, local and
// agent-side validation. Run by tests/interop/test_javaspiffe.py as a single source file:
//
//   SPIFFE_ENDPOINT_SOCKET=unix:///... HERALD_INTEROP_JAVA_ID=spiffe://... \
//       java -cp <java-spiffe-core's classpath> JavaSpiffeCheck.java
//
// Prints one line per check ("PASS name" or "FAIL name: why") and exits 1 if any failed.

import io.spiffe.bundle.x509bundle.X509Bundle;
import io.spiffe.spiffeid.SpiffeId;
import io.spiffe.svid.jwtsvid.JwtSvid;
import io.spiffe.svid.x509svid.X509Svid;
import io.spiffe.svid.x509svid.X509SvidValidator;
import io.spiffe.workloadapi.DefaultJwtSource;
import io.spiffe.workloadapi.DefaultWorkloadApiClient;
import io.spiffe.workloadapi.DefaultX509Source;
import io.spiffe.workloadapi.JwtSource;
import io.spiffe.workloadapi.WorkloadApiClient;
import java.math.BigInteger;
import java.time.Duration;
import java.time.Instant;
import java.util.List;
import java.util.Set;

public class JavaSpiffeCheck {
    private static final Duration ROTATION_WAIT = Duration.ofSeconds(60);
    private static int failures = 0;

    interface Check {
        String run() throws Exception;
    }

    static void check(String name, Check body) {
        try {
            String detail = body.run();
            System.out.println("PASS " + name + (detail.isEmpty() ? "" : ": " + detail));
        } catch (Exception | AssertionError e) {
            failures++;
            System.out.println("FAIL " + name + ": " + e);
        }
    }

    static void require(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] args) throws Exception {
        SpiffeId me = SpiffeId.parse(System.getenv("HERALD_INTEROP_JAVA_ID"));
        List<String> audiences = List.of("spiffe://example.org/billing", "reports", "audit");

        try (DefaultX509Source source = DefaultX509Source.newSource()) {
            check("x509source-svid", () -> {
                X509Svid svid = source.getX509Svid();
                require(svid.getSpiffeId().equals(me), "SVID is " + svid.getSpiffeId());
                X509Bundle bundle = source.getBundleForTrustDomain(me.getTrustDomain());
                require(!bundle.getX509Authorities().isEmpty(), "no X.509 authorities");
                X509SvidValidator.verifyChain(svid.getChain(), source);
                return svid.getSpiffeId() + ", " + bundle.getX509Authorities().size() + " CA";
            });
            check("x509source-rotation", () -> {
                BigInteger first = source.getX509Svid().getLeaf().getSerialNumber();
                Instant deadline = Instant.now().plus(ROTATION_WAIT);
                while (source.getX509Svid().getLeaf().getSerialNumber().equals(first)) {
                    require(Instant.now().isBefore(deadline), "no rotation in " + ROTATION_WAIT);
                    Thread.sleep(100);
                }
                X509SvidValidator.verifyChain(source.getX509Svid().getChain(), source);
                return "serial " + first.toString(16) + " -> "
                        + source.getX509Svid().getLeaf().getSerialNumber().toString(16);
            });
        }

        try (JwtSource jwtSource = DefaultJwtSource.newSource();
                WorkloadApiClient client = DefaultWorkloadApiClient.newClient()) {
            String[] extra = audiences.subList(1, audiences.size()).toArray(new String[0]);
            check("jwt-fetch-several-audiences", () -> {
                JwtSvid svid = client.fetchJwtSvid(audiences.get(0), extra);
                require(svid.getSpiffeId().equals(me), "JWT-SVID is " + svid.getSpiffeId());
                require(svid.getAudience().containsAll(audiences), "aud " + svid.getAudience());
                return "aud " + svid.getAudience();
            });
            check("jwtsource-fetch-and-local-validation", () -> {
                JwtSvid svid = jwtSource.fetchJwtSvid(audiences.get(0), extra);
                JwtSvid local = JwtSvid.parseAndValidate(svid.getToken(), jwtSource, Set.of("reports"));
                require(local.getSpiffeId().equals(me), "validated as " + local.getSpiffeId());
                return "";
            });
            check("validate-by-the-agent", () -> {
                JwtSvid svid = client.fetchJwtSvid(audiences.get(0), extra);
                JwtSvid validated = client.validateJwtSvid(svid.getToken(), "audit");
                require(validated.getSpiffeId().equals(me), "validated as " + validated.getSpiffeId());
                return "";
            });
            check("validate-refuses-another-audience", () -> {
                JwtSvid svid = client.fetchJwtSvid(audiences.get(0), extra);
                try {
                    client.validateJwtSvid(svid.getToken(), "someone-else");
                } catch (Exception refused) {
                    return refused.getClass().getSimpleName();
                }
                throw new AssertionError("the agent validated a token for an audience not in it");
            });
        }
        System.exit(failures == 0 ? 0 : 1);
    }
}
