# The chart of bench/report.md: for each row, mproc/Python and mproc/floor as
# horizontal bars from 1x, on a log scale (a bar to the left: mproc is faster).
# bench/run.py draws it as
#
#   gnuplot -e "datafile='F'; outfile='report.png'; nrows=N; xmin=A; xmax=B" bench/plot.gp
#
# datafile has one tab-separated line per row: y (N for the first row, at the
# top, down to 1), row id, mproc/Python, mproc/floor (NaN where there is
# none), and the two ratios as the table prints them, for the value labels.

if (!exists("datafile") || !exists("outfile") || !exists("nrows")) {
    print "plot.gp: set datafile, outfile, nrows, xmin and xmax with -e"; exit status 1
}

height = 150 + 30 * nrows
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
    set terminal pngcairo size 1000, height font "sans,10"
} else {
    set terminal png size 1000, height
}
set termoption noenhanced            # row ids have underscores
set output outfile
set datafile separator "\t"

python_color = "#E69F00"
floor_color  = "#0072B2"
bar = 0.36                          # height of one bar; two per row

set title "mproc's time relative to Python and to the floor (the raw system calls)" font ",12"
set xlabel "ratio, log scale (below 1x: mproc is faster)"
set logscale x 10
set xrange [xmin:xmax]
set format x "%gx"
set mxtics 10
set grid xtics lc "#cccccc"
set yrange [0.4:nrows + 0.6]
set ytics scale 0 nomirror
set bmargin 6
set key at screen 0.5, screen 0.015 center bottom horizontal
set style fill solid 0.9 noborder
set arrow from 1, graph 0 to 1, graph 1 nohead lw 2 lc "black" front
set label "<- mproc faster" at 1, graph 1 right offset -1, 0.8 font ",9"
set label "mproc slower ->" at 1, graph 1 left offset 1, 0.8 font ",9"

do for [i = 1:nrows:2] {            # a light band behind every other row
    set object i rect from graph 0, first i - 0.5 to graph 1, first i + 0.5 \
        fc rgb "#f0f0f0" fs solid noborder behind
}

lo(r) = r < 1 ? r : 1
hi(r) = r < 1 ? 1 : r
left(r)  = r <  1 ? r : NaN         # value labels: beside the bar's far end
right(r) = r >= 1 ? r : NaN

plot datafile using 3:($1 + bar/2):(lo($3)):(hi($3)):($1 + 0.01):($1 + bar) \
         with boxxyerror lc rgb python_color title "mproc / Python", \
     '' using 4:($1 - bar/2):(lo($4)):(hi($4)):($1 - bar):($1 - 0.01):ytic(2) \
         with boxxyerror lc rgb floor_color title "mproc / floor", \
     '' using (left($3)):($1 + bar/2):5 with labels right offset -0.5, 0 font ",8" notitle, \
     '' using (right($3)):($1 + bar/2):5 with labels left offset 0.5, 0 font ",8" notitle, \
     '' using (left($4)):($1 - bar/2):6 with labels right offset -0.5, 0 font ",8" notitle, \
     '' using (right($4)):($1 - bar/2):6 with labels left offset 0.5, 0 font ",8" notitle
