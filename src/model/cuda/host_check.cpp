// Host emulation of kernels.cu: checks the kernels' index arithmetic and
// maths on the CPU, with no GPU and no CUDA toolkit (only a C++ compiler).
// scripts/cuda-build.sh compiles and runs it before every cuda build:
//   g++ -std=c++17 -O1 -o host_check src/model/cuda/host_check.cpp && ./host_check
//
// The kernels are included as plain C++: `__global__` expands to nothing and
// the launch is one thread (blockIdx 0, blockDim 1, gridDim 1), so each
// grid-stride loop walks its whole index space. Each check compares a kernel
// with a direct definition or its adjoint (<op(x), g> == <x, op^T(g)>), and
// the KD loss with a double-precision reference and finite differences. On a
// GPU, `distill check-device --device cuda` then compares the real launches
// with the CPU ops.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
struct Dim { unsigned x; };
static Dim blockIdx{0}, blockDim{1}, gridDim{1}, threadIdx{0};
#define __global__
using std::min;
#include "kernels.cu"

static unsigned seed = 1;
float rnd() { seed = seed * 1664525u + 1013904223u; return ((seed >> 8) / 16777216.0f) * 2 - 1; }
std::vector<float> rv(size_t n) { std::vector<float> v(n); for (auto &x : v) x = rnd(); return v; }
double dot(const std::vector<float>& a, const std::vector<float>& b) { double s = 0; for (size_t i = 0; i < a.size(); ++i) s += (double)a[i] * b[i]; return s; }
int fails = 0;
void check(bool ok, const char* what) { if (!ok) { printf("FAIL %s\n", what); ++fails; } }

int main() {
  unsigned geoms[][4] = {{2,5,4,3},{1,7,7,1},{3,2,3,2},{2,28,28,1},{4,14,14,16}};
  for (auto& g : geoms) {
    unsigned B=g[0],H=g[1],W=g[2],C=g[3];
    size_t rows=(size_t)B*H*W;
    auto x = rv(rows*C);
    std::vector<float> p(rows*9*C);
    im2col3x3_fwd(x.data(), p.data(), B,H,W,C);
    // direct definition
    bool ok=true;
    for (unsigned b=0;b<B;++b) for (unsigned y=0;y<H;++y) for (unsigned xx=0;xx<W;++xx) for (int dy=0;dy<3;++dy) for (int dx=0;dx<3;++dx) for (unsigned c=0;c<C;++c) {
      int sy=y+dy-1, sx=xx+dx-1; float e = (sy<0||sy>=(int)H||sx<0||sx>=(int)W)?0.f:x[((b*H+sy)*W+sx)*C+c];
      if (p[((b*H+y)*W+xx)*9*C+(dy*3+dx)*C+c]!=e) ok=false; }
    check(ok,"im2col direct");
    // adjoint: <im2col(x), G> == <x, col2im(G)>
    auto G = rv(rows*9*C); std::vector<float> gx(rows*C, 0.f);
    col2im3x3_bwd(G.data(), gx.data(), B,H,W,C);
    double a=dot(p,G), bb=dot(x,gx); check(fabs(a-bb) < 1e-3*(1+fabs(a)), "col2im adjoint");
    // pool
    unsigned Ho=H/2, Wo=W/2; size_t no=(size_t)B*Ho*Wo*C;
    std::vector<float> po(no); std::vector<unsigned> arg(no);
    max_pool2_fwd(x.data(), po.data(), arg.data(), B,H,W,C);
    ok=true;
    for (unsigned b=0;b<B;++b) for (unsigned y=0;y<Ho;++y) for (unsigned xx=0;xx<Wo;++xx) for (unsigned c=0;c<C;++c) {
      float m=-INFINITY; for (int q=0;q<4;++q){ float v=x[((b*H+2*y+q/2)*W+2*xx+q%2)*C+c]; m=std::max(m,v);} 
      size_t o=((b*Ho+y)*Wo+xx)*C+c; if (po[o]!=m || x[arg[o]]!=m) ok=false; }
    check(ok,"pool fwd");
    auto GP = rv(no); std::vector<float> gpx(rows*C,0.f);
    max_pool2_bwd(GP.data(), arg.data(), gpx.data(), no);
    // adjoint of the selection: <pool(x) selection, GP> = sum GP*x[arg] == <x, gpx>
    check(fabs(dot(po,GP)-dot(x,gpx)) < 1e-3, "pool adjoint");
    // bias_act no pool, relu
    unsigned O = C; auto yv = rv(rows*O); auto bias = rv(O);
    std::vector<float> out(rows*O); std::vector<unsigned char> code(rows*O);
    bias_act_fwd(yv.data(), bias.data(), out.data(), code.data(), rows, O, 1);
    ok=true; for (size_t i=0;i<rows*O;++i){ float e=std::max(yv[i]+bias[i%O],0.f); if(out[i]!=e|| (code[i]!=255)!=(e>0)) ok=false;} check(ok,"bias_act fwd");
    auto GO = rv(rows*O); std::vector<float> gy(rows*O,0.f);
    bias_act_bwd(GO.data(), code.data(), gy.data(), rows*O);
    ok=true; for (size_t i=0;i<rows*O;++i){ float e = out[i]>0?GO[i]:0; if (gy[i]!=e) ok=false;} check(ok,"bias_act bwd");
    // column sums masked
    std::vector<float> gb(O, 0.5f);
    { unsigned rpp=256, parts=std::max(1u,(unsigned)((rows+rpp-1)/rpp)); std::vector<float> part(parts*O);
      column_sums_partial(GO.data(), code.data(), rows, O, rpp, parts, part.data());
      column_sums_finish(part.data(), parts, O, 1.f, 0.f, 1.f, gb.data()); }
    ok=true; for (unsigned j=0;j<O;++j){ double s=0.5; for(size_t r=0;r<rows;++r) if(code[r*O+j]!=255) s+=GO[r*O+j]; if (fabs(s-gb[j])>1e-3) ok=false;} check(ok,"column sums");
    // pooled epilogue
    std::vector<float> pout(no); std::vector<unsigned char> pcode(no);
    bias_act_pool_fwd(yv.data(), bias.data(), pout.data(), pcode.data(), B,H,W,O,1);
    ok=true;
    for (unsigned b=0;b<B;++b) for (unsigned y=0;y<Ho;++y) for (unsigned xx=0;xx<Wo;++xx) for (unsigned c=0;c<O;++c) {
      float m=0; for (int q=0;q<4;++q){ float v=std::max(yv[((b*H+2*y+q/2)*W+2*xx+q%2)*O+c]+bias[c],0.f); m=std::max(m,v);} 
      size_t o=((b*Ho+y)*Wo+xx)*O+c; if (pout[o]!=m) ok=false;
      if (m>0) { int q=pcode[o]; if (q>3 || std::max(yv[((b*H+2*y+q/2)*W+2*xx+q%2)*O+c]+bias[c],0.f)!=m) ok=false; } else if (pcode[o]!=255) ok=false; }
    check(ok,"pool epilogue fwd");
    auto GQ = rv(no); std::vector<float> gyp(rows*O,0.f);
    bias_act_pool_bwd(GQ.data(), pcode.data(), gyp.data(), B,H,W,O);
    // each active output's gradient lands on exactly the winning y
    double tot=0; for (size_t o=0;o<no;++o) if (pcode[o]!=255) tot+=GQ[o];
    double got=0; for (auto v: gyp) got+=v; check(fabs(tot-got)<1e-3,"pool epilogue bwd total");
    ok=true;
    for (unsigned b=0;b<B;++b) for (unsigned y=0;y<Ho;++y) for (unsigned xx=0;xx<Wo;++xx) for (unsigned c=0;c<O;++c) {
      size_t o=((b*Ho+y)*Wo+xx)*O+c; if (pcode[o]==255) continue; int q=pcode[o];
      if (gyp[((b*H+2*y+q/2)*W+2*xx+q%2)*O+c]!=GQ[o]) ok=false; }
    check(ok,"pool epilogue bwd routing");
  }
  // KD loss vs finite differences and a direct formula
  unsigned R=37, K=10; auto s = rv(R*K); for (auto& v: s) v*=8;
  std::vector<float> y(R*K,0.f), p(R*K);
  for (unsigned r=0;r<R;++r){ y[r*K+(r*7)%K]=0.7f; y[r*K+(r*3+1)%K]+=0.3f; double z=0; for(unsigned c=0;c<K;++c){p[r*K+c]=exp(rnd()*4); z+=p[r*K+c];} for(unsigned c=0;c<K;++c)p[r*K+c]/=z; }
  float cases[][3] = {{1,1,0},{0,1,0},{0,4,0},{0.5,4,0},{0.3,2,0}};
  for (auto& cs : cases) {
    float alpha=cs[0], T=cs[1];
    auto total = [&](const std::vector<float>& sv, std::vector<float>* grad) {
      std::vector<float> rl(R), g(R*K), loss(1);
      kd_loss_rows(sv.data(), alpha>0?y.data():nullptr, alpha, alpha<1?p.data():nullptr, 1-alpha, T, R, K, 1.f/R, rl.data(), g.data());
      std::vector<float> part(1); column_sums_partial(rl.data(), nullptr, R, 1, 256, 1, part.data());
      column_sums_finish(part.data(), 1, 1, 1.f/R, 0.f, 0.f, loss.data());
      if (grad) *grad=g; return (double)loss[0]; };
    std::vector<float> g; double L = total(s, &g);
    // direct double-precision reference
    double ref=0; for (unsigned r=0;r<R;++r){ double m=-1e30,mt=-1e30; for(unsigned c=0;c<K;++c){m=std::max(m,(double)s[r*K+c]); mt=std::max(mt,(double)s[r*K+c]/T);} double z=0,zt=0; for(unsigned c=0;c<K;++c){z+=exp(s[r*K+c]-m); zt+=exp(s[r*K+c]/T-mt);} 
      for(unsigned c=0;c<K;++c){ if(alpha>0) ref-= alpha*y[r*K+c]*(s[r*K+c]-m-log(z)); if(alpha<1) ref-= (1-alpha)*T*T*p[r*K+c]*(s[r*K+c]/T-mt-log(zt)); } }
    ref/=R; check(fabs(ref-L) < 1e-4*(1+fabs(ref)), "kd loss value");
    bool ok=true; for (size_t i=0;i<R*K;i+=7){ auto sp=s, sm=s; sp[i]+=1e-2f; sm[i]-=1e-2f; double fd=(total(sp,nullptr)-total(sm,nullptr))/2e-2; if (fabs(fd-g[i])>2e-3) {ok=false; printf("  i %zu fd %g an %g\n", i, fd, g[i]);} }
    check(ok,"kd grad vs finite differences");
  }
  float sc=2.5f; std::vector<float> src={1,2,3}, dst={1,1,1}; scaled_add(&sc, src.data(), dst.data(), 3); check(dst[2]==8.5f, "scaled_add");
  printf(fails? "%d FAILED\n" : "all host-emulated kernel checks passed\n", fails);
  return fails != 0;
}
